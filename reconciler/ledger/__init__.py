"""The ledger: a durable SQLite record of runs, generations, instances and their cost.

Owns: everything that touches the ledger file; sqlite-utils is imported only inside
this package (an import-linter contract enforces it). Must not: plan, call a cloud or
store secrets. Other layers use `Ledger` and the model's `LedgerView`, never SQL.
"""

from reconciler.ledger.paths import LEDGER_FILENAME, default_state_dir
from reconciler.ledger.store import Ledger

__all__ = ["LEDGER_FILENAME", "Ledger", "default_state_dir"]

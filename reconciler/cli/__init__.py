"""The command line (DESIGN §6): the only package that knows click and exit codes.

Owns: argument parsing and presenting results. Must not: contain logic beyond calling
the engine, ledger and renderers.
"""

import gc

# The commands' modules are imported by the group when a command is asked for
# (reconciler.cli.root.COMMAND_MODULES).
from reconciler.cli.root import cli, pause_collector


def main() -> None:
    pause_collector()  # resumed once the command's module is loaded
    try:
        cli(prog_name="reconciler")
    finally:
        # What is left at exit is frozen too: the interpreter's teardown then skips
        # collecting it (about 40 ms of a pass here, for memory the exit frees anyway).
        gc.freeze()


__all__ = ["cli", "main"]

"""Operator commands outside the loop: rollback, release, retry, unfreeze and their
requests to a running daemon (`operator`), and rebuilding the ledger (`rebuild`)."""

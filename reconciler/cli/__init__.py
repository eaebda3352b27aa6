"""The command line (DESIGN §6): the only package that knows click and exit codes.

Owns: argument parsing and presenting results. Must not: contain logic beyond calling
the engine, ledger and renderers.
"""

# The commands' modules are imported by the group when a command is asked for
# (reconciler.cli.root.COMMAND_MODULES).
from reconciler.cli.root import cli


def main() -> None:
    cli(prog_name="reconciler")


__all__ = ["cli", "main"]

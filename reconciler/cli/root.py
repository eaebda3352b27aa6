"""The `reconciler` command group and its global options."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.ledger import default_state_dir
from reconciler.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the ledger lives (default: $STATE_DIRECTORY, $RECONCILER_STATE_DIR, "
    "~/.local/state/reconciler).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="reconciler")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, log_format: str, verbose: bool) -> None:
    """Replace cloud instances to match a git-committed desired state."""
    configure_logging(fmt=log_format, verbose=verbose)
    ctx.obj = {"state_dir": state_dir or default_state_dir(), "verbose": verbose}

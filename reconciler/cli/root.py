"""The `reconciler` command group and its global options."""

from __future__ import annotations

import gc
import importlib
import sys
from pathlib import Path
from typing import Any, Final

import click

from reconciler.cli.exitcodes import EXIT_ERROR

# Where each command is defined: a command's module (and what it imports: the engine,
# the ledger, rich, pydantic, the adapters) is loaded only when that command runs, so
# `--version` or `status` does not pay for `apply`'s imports. A test checks this table
# against the commands the modules register.
COMMAND_MODULES: Final = {
    **dict.fromkeys(
        ("abort", "apply", "daemon", "demo", "plan", "plugins", "release", "retry",
         "rollback", "sandbox", "status", "switch", "unfreeze", "validate", "volume"),
        "reconciler.cli.commands",
    ),
    "ledger": "reconciler.cli.ledger",
    "promote": "reconciler.cli.promotion",
    "set-image": "reconciler.cli.promotion",
    "trust": "reconciler.cli.trust",
    "verify": "reconciler.cli.trust",
}  # fmt: skip


# Whether `main` paused the garbage collector for the command's imports (see there).
_collector_paused = False


def pause_collector() -> None:
    """Start-up allocates what lives as long as the process: modules, classes, functions.
    Collecting while they load only traverses them again and again (about 25 ms of a
    pass here), so the collector waits until the command's modules are in."""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def resume_collector() -> None:
    """The command's modules are in: they leave the collector's generations for good
    (`gc.freeze`, so no later collection, nor the teardown at exit, walks them again)
    and collection resumes. Does nothing unless `pause_collector` paused it."""
    global _collector_paused
    if _collector_paused:
        gc.freeze()
        gc.enable()
        _collector_paused = False


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from reconciler.buildinfo import describe

    click.echo(describe())
    ctx.exit()


class ReconcilerGroup(click.Group):
    """click exits 2 on a usage error, which is also `plan --detailed-exitcode`'s "changes
    pending": here every error exits 1, so 2 always means changes and only that."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(module)  # registers its commands on this group
        resume_collector()
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_ERROR if exc.exit_code == 2 else exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


@click.group(
    cls=ReconcilerGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the ledger lives (default: $STATE_DIRECTORY, $RECONCILER_STATE_DIR, "
    "~/.local/state/reconciler).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json", "journal"]),
    default="auto",
    show_default=True,
    envvar="RECONCILER_LOG_FORMAT",
    show_envvar=True,
    help="auto: journal under systemd's journal, console on a terminal, else json.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the version and the source commit, and exit.",
)  # fmt: skip
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, log_format: str, verbose: bool) -> None:
    """Replace cloud instances to match a git-committed desired state."""
    from reconciler.ledger.paths import default_state_dir
    from reconciler.logs import configure_logging

    configure_logging(fmt=log_format, verbose=verbose)
    ctx.obj = {"state_dir": state_dir or default_state_dir(), "verbose": verbose}

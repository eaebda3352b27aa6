"""What a command loads: the group imports a command's module only when that command
runs (reconciler.cli.root.COMMAND_MODULES), so `--version` and `--help` of one command
do not pay for the engine, the ledger, pydantic or the adapters; a pass with nothing to
do does not load the applier or the plugins. Counted in modules imported, never timed."""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from reconciler.cli.root import COMMAND_MODULES, cli, pause_collector, resume_collector
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli
from tests.support.desired_builder import IMAGE_V1, write_desired

HEAVY = ("reconciler.engine", "reconciler.desired.models", "pydantic", "libcloud",
         "sqlite_utils", "rich.console", "reconciler.ledger.store")  # fmt: skip


def test_the_command_table_names_every_command_where_it_is_defined() -> None:
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(module)
    registered = {name: command.callback.__module__ for name, command in cli.commands.items()
                  if command.callback is not None}  # fmt: skip
    assert registered == {name: COMMAND_MODULES[name] for name in registered}
    assert set(registered) == set(COMMAND_MODULES)


def _loaded_by(*args: str) -> set[str]:
    code = (
        "import sys\n"
        "from reconciler.cli import cli\n"
        f"sys.argv = ['reconciler', *{list(args)!r}]\n"
        "try:\n    cli.main(prog_name='reconciler')\n"
        "except SystemExit:\n    pass\n"
        "print('\\n'.join('module ' + m for m in sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    return {line.split()[1] for line in done.stderr.splitlines() if line.startswith("module ")}


def test_version_loads_none_of_the_heavy_modules() -> None:
    loaded = _loaded_by("--version")
    assert not [m for m in loaded for heavy in HEAVY if m == heavy or m.startswith(heavy + ".")]


def test_a_commands_help_loads_only_its_own_module() -> None:
    loaded = _loaded_by("verify", "--help")
    assert "reconciler.cli.trust" in loaded
    assert "reconciler.cli.commands" not in loaded and "reconciler.engine" not in loaded
    assert "reconciler.cli.promotion" not in loaded


def test_a_pass_with_nothing_to_do_loads_neither_the_applier_nor_the_plugins(
    cli: Cli, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """The daemon's usual pass: the applier, the rollout gates and the plugins (with
    their HTTP client) load with the first action, not before."""
    desired = write_desired(
        tmp_path / "desired", endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 1}}},
    )  # fmt: skip
    assert cli("apply", "--desired", str(desired), "--yes").code == 0

    loaded = _loaded_by("--state-dir", str(cli.state_dir), "--log-format", "json",
                        "apply", "--desired", str(desired), "--yes")  # fmt: skip

    assert "reconciler.engine" in loaded and "reconciler.providers.ec2.adapter" in loaded
    unwanted = ("reconciler.apply.applier", "reconciler.apply.gates", "reconciler_plugins",
                "httpx")  # fmt: skip
    assert not [m for m in loaded for u in unwanted if m == u or m.startswith(u + ".")]


def test_the_collector_is_paused_for_start_up_only(tmp_path: Path) -> None:
    """`main` pauses garbage collection while a command's modules load; the command
    itself runs with it on (a long daemon or apply must collect), its start-up objects
    frozen out of later collections. A collector the host turned off stays off."""
    try:
        pause_collector()
        assert not gc.isenabled()
        CliRunner().invoke(cli, ["validate", "--desired", str(tmp_path / "none")])
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.unfreeze()

        gc.disable()
        pause_collector()
        resume_collector()
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()

"""What a command loads: the group imports a command's module only when that command
runs (reconciler.cli.root.COMMAND_MODULES), so `--version` and `--help` of one command
do not pay for the engine, the ledger, pydantic or the adapters. Counted in modules
imported, never timed."""

from __future__ import annotations

import importlib
import subprocess
import sys

from reconciler.cli.root import COMMAND_MODULES, cli

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
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    return set(done.stderr.split())


def test_version_loads_none_of_the_heavy_modules() -> None:
    loaded = _loaded_by("--version")
    assert not [m for m in loaded for heavy in HEAVY if m == heavy or m.startswith(heavy + ".")]


def test_a_commands_help_loads_only_its_own_module() -> None:
    loaded = _loaded_by("verify", "--help")
    assert "reconciler.cli.trust" in loaded
    assert "reconciler.cli.commands" not in loaded and "reconciler.engine" not in loaded
    assert "reconciler.cli.promotion" not in loaded

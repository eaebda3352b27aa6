"""`reconciler verify` and `reconciler trust`: signed commits by hand (issue 17).

Owns: the two commands' options and output. Must not: verify differently from the
daemon (both call reconciler.trust.verify with the same settings).
"""

from __future__ import annotations

import getpass
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from reconciler.cli.common import domain_errors, fail, json_option, open_ledger
from reconciler.cli.exitcodes import EXIT_ERROR
from reconciler.cli.root import cli
from reconciler.present import render
from reconciler.present.terminal import shown
from reconciler.trust.signers import load_trusted_signers
from reconciler.trust.verify import verify


@cli.command(name="verify")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=".", show_default=True, help="The repository to check.")  # fmt: skip
@click.option("--range", "span", metavar="A..B",
              help="Every commit in B and not in A (strict); default: HEAD alone.")  # fmt: skip
@click.option("--trusted-signers", "signers_file", required=True, metavar="FILE",
              envvar="RECONCILER_TRUSTED_SIGNERS", help="As for `daemon`.")  # fmt: skip
@json_option
def verify_command(repo: Path, span: str | None, signers_file: str, as_json: bool) -> None:
    """Check commit signatures as the daemon would; exit 0 only if every one is trusted."""
    base, head = span.split("..", 1) if span and ".." in span else (None, span or "HEAD")
    with domain_errors(), tempfile.TemporaryDirectory(prefix="reconciler-verify-") as scratch:
        signers = load_trusted_signers(Path(signers_file), Path(scratch) / "trust")
        mode = "strict" if base is not None else "head"
        verdicts = verify(repo, head or "HEAD", signers, mode=mode,
                          since=[base] if base else [])  # fmt: skip
    rows = [v.to_json() for v in verdicts]
    if as_json:
        render.print_json(rows)
    else:
        console = Console()
        for row in rows:
            mark = "trusted" if row["trusted"] else "NOT TRUSTED"
            key = f"{row['key_type']} {row['fingerprint']}" if row["fingerprint"] else "no key"
            console.print(shown(f"{str(row['commit'])[:12]}  {mark:11s}  {key}  "
                                f"{row['author']}: {row['subject']}  ({row['why']})"))  # fmt: skip
        if not rows:
            console.print("No commits in that range.")
    if any(not v.trusted for v in verdicts):
        raise SystemExit(EXIT_ERROR)


@cli.command(name="trust")
@click.argument("commit")
@click.option("--reason", default=None, help="Why it is accepted (kept in the ledger).")
@click.pass_context
def trust_command(ctx: click.Context, commit: str, reason: str | None) -> None:
    """Accept COMMIT (a full sha) without a trusted signature; the ledger keeps who and when.

    The running daemon takes it at its next pass. Commits it descends from are accepted
    with it in strict mode (accepting a commit accepts the tree it names)."""
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        fail(f"COMMIT must be a full 40-character sha, got {commit!r}")
    who = os.environ.get("SUDO_USER") or getpass.getuser()
    with open_ledger(ctx) as ledger, domain_errors():
        ledger.trust_commit(commit, by=who, at=datetime.now(UTC), reason=reason)
    click.echo(f"accepted {commit[:12]} (by {who}); the daemon applies it at its next pass")


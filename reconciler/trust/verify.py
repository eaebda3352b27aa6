"""Verifying the signatures of a range of commits with git itself (issue 17).

Owns: asking git for its machine-readable verdict on each commit (`%G?` and the key
fields) with explicit settings only (our allowed-signers file, our private keyring,
no user or system configuration), and turning it into trusted or not, with why.
Only `G` (a good signature by a key git trusts) from a key the trusted-signers file
names is trusted; every other status (no signature, bad, unknown key, expired or
revoked key, a format git cannot check) is not.
Must not: decide what the daemon does with an untrusted commit (it keeps healing
against the last good one), or write anything but its own scratch files.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from reconciler.errors import FetchFailed
from reconciler.trust.signers import TrustedSigners, tool_env

MODES: Final = ("strict", "head")
TIMEOUT: Final = 120.0
# git's %G? letters, worded for operators.
STATUS_WORDS: Final = {
    "G": "good signature",
    "B": "bad signature (the commit was changed after it was signed)",
    "U": "signed by a key that is not in the trusted-signers file",
    "X": "the signature has expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
    "E": "the signature cannot be checked (unknown key or format)",
    "N": "not signed",
}
_FIELDS: Final = ("%H", "%G?", "%GF", "%GP", "%GS", "%an <%ae>", "%s", "%P")


@dataclass(frozen=True)
class Signature:
    sha: str
    status: str  # git's %G? letter
    fingerprint: str  # %GF: the signing key
    primary: str  # %GP: its primary key (OpenPGP)
    signer: str  # %GS
    author: str
    subject: str
    parents: int

    @property
    def key_type(self) -> str | None:
        if not self.fingerprint:
            return None
        return "ssh" if self.fingerprint.startswith("SHA256:") else "openpgp"


@dataclass(frozen=True)
class Verdict:
    signature: Signature
    trusted: bool
    why: str

    @property
    def sha(self) -> str:
        return self.signature.sha

    def to_json(self) -> dict[str, object]:
        s = self.signature
        return {
            "commit": s.sha, "trusted": self.trusted, "why": self.why, "status": s.status,
            "key_type": s.key_type, "fingerprint": s.primary or s.fingerprint or None,
            "signer": s.signer or None, "author": s.author, "subject": s.subject,
            "merge": s.parents > 1,
        }  # fmt: skip


def signatures(repo: Path, revisions: Sequence[str], signers: TrustedSigners) -> list[Signature]:
    """git's verdict on each commit `git log` lists for `revisions` (newest first)."""
    command = [
        "git", "-C", str(repo),
        "-c", f"gpg.ssh.allowedSignersFile={signers.allowed_signers}",
        "-c", "gpg.program=gpg", "-c", "gpg.ssh.program=ssh-keygen",
        "-c", "log.showSignature=false", "-c", "core.hooksPath=/dev/null",
        "log", "--format=" + "%x1f".join(_FIELDS) + "%x1e", *revisions, "--",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        env=tool_env(signers.home, signers.gnupg),
    )  # fmt: skip
    if done.returncode != 0:
        raise FetchFailed(f"git log {' '.join(revisions)} failed: {done.stderr.strip()[:500]}")
    found = []
    for record in done.stdout.split("\x1e"):
        fields = record.strip("\n").split("\x1f")
        if len(fields) != len(_FIELDS):
            continue
        sha, status, fpr, primary, signer, author, subject, parents = fields
        found.append(Signature(sha, status, fpr, primary, signer, author, subject,
                               len(parents.split())))  # fmt: skip
    return found


def judge(signature: Signature, signers: TrustedSigners) -> Verdict:
    status = signature.status
    if status != "G":
        return Verdict(signature, False, STATUS_WORDS.get(status, f"git status {status!r}"))
    key = signature.primary or signature.fingerprint
    known = signers.ssh_fingerprints if signature.key_type == "ssh" else signers.pgp_fingerprints
    if key not in known:
        # git said good, but not with a key the file names (a keyring or config we did
        # not make): not trusted, whatever git thinks.
        return Verdict(signature, False, f"key {key} is not in the trusted-signers file")
    return Verdict(signature, True, "good signature by a trusted key")


def verify(
    repo: Path,
    head: str,
    signers: TrustedSigners,
    *,
    mode: str,
    since: Iterable[str] = (),
    accepted: Iterable[str] = (),
) -> list[Verdict]:
    """The verdicts that matter for applying `head`: in `head` mode the head's; in
    `strict` mode every commit reachable from `head` and not from `since` (the last
    applied commit) or from a commit an operator accepted (`reconciler trust`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "head":
        revisions = ["-1", head]
    else:
        revisions = [head, *(f"^{sha}" for sha in (*since, *accepted))]
    return [judge(s, signers) for s in signatures(repo, revisions, signers)]


def untrusted(verdicts: Iterable[Verdict], accepted: Iterable[str] = ()) -> list[Verdict]:
    """The verdicts that refuse the head: untrusted and not accepted by an operator."""
    ok = set(accepted)
    return [v for v in verdicts if not v.trusted and v.sha not in ok]

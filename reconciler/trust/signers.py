"""The trusted-signers file: who may sign the commits the daemon applies (issue 17).

Owns: reading `--trusted-signers FILE` (outside the repository it verifies) and
preparing, in a directory of our own, what git and gpg verify against: an
allowed-signers file for SSH signatures and a private GnuPG home holding only the
file's OpenPGP keys, marked trusted there and nowhere else. One file may hold both:

- lines in git's allowed-signers format (`ops@example.com ssh-ed25519 AAAA...`), and
- ASCII-armored OpenPGP public key blocks (`gpg --armor --export KEY`).

Must not: accept a file that is missing, unreadable or has no key (the daemon refuses
to start rather than trusting all), read the user's or the system's git or gpg
configuration, or look at anything in the repository being verified.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from reconciler.errors import ConfigurationError

ARMOR: Final = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.S
)
TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class TrustedSigners:
    """What one trusted-signers file allows, prepared under `home`."""

    source: Path
    home: Path  # our own: allowed_signers, gnupg/
    ssh_fingerprints: frozenset[str]  # SHA256:... as git's %GF shows them
    pgp_fingerprints: frozenset[str]  # primary key fingerprints, as git's %GP shows them

    @property
    def allowed_signers(self) -> Path:
        return self.home / "allowed_signers"

    @property
    def gnupg(self) -> Path:
        return self.home / "gnupg"

    def describe(self) -> str:
        return (
            f"{self.source}: {len(self.ssh_fingerprints)} SSH key(s), "
            f"{len(self.pgp_fingerprints)} OpenPGP key(s)"
        )


def load_trusted_signers(source: Path, home: Path) -> TrustedSigners:
    """Read `source` and prepare `home`; ConfigurationError says why it cannot be used."""
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"--trusted-signers {source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--trusted-signers {source}: cannot be read ({exc})") from None
    blocks = ARMOR.findall(text)
    ssh_lines = [
        line.strip()
        for line in ARMOR.sub("", text).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not blocks and not ssh_lines:
        raise ConfigurationError(
            f"--trusted-signers {source}: no key in it (allowed-signers lines or armored "
            "OpenPGP public keys); refusing to verify against nothing"
        )
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, mode=0o700)
    (home / "gnupg").mkdir(mode=0o700)
    (home / "allowed_signers").write_text("\n".join(ssh_lines) + "\n")
    ssh = frozenset(_ssh_fingerprint(source, line, home) for line in ssh_lines)
    pgp = frozenset(_import_pgp(source, block, home / "gnupg") for block in blocks)
    return TrustedSigners(source, home, ssh, frozenset().union(*pgp) if pgp else frozenset())


def tool_env(home: Path, gnupg: Path | None = None) -> dict[str, str]:
    """An environment that reads no configuration but ours: no user or system git or
    gpg settings, no agent, no terminal."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return {
        "PATH": path,
        "HOME": str(home),
        "GNUPGHOME": str(gnupg or home / "gnupg"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }


def _ssh_fingerprint(source: Path, line: str, home: Path) -> str:
    """The SHA256 fingerprint of an allowed-signers line's key (its last two fields
    before an optional comment are type and key)."""
    fields = line.split()
    key_at = next((i for i, f in enumerate(fields) if f.startswith(("ssh-", "ecdsa-", "sk-"))),
                  None)  # fmt: skip
    if key_at is None or key_at + 1 >= len(fields):
        raise ConfigurationError(
            f"--trusted-signers {source}: not an allowed-signers line: {line[:60]!r}"
        )
    key_file = home / "key.pub"
    key_file.write_text(f"{fields[key_at]} {fields[key_at + 1]}\n")
    done = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_file)],
        capture_output=True, text=True, timeout=TIMEOUT, env=tool_env(home), check=False,
    )  # fmt: skip
    key_file.unlink()
    if done.returncode != 0 or len(done.stdout.split()) < 2:
        raise ConfigurationError(
            f"--trusted-signers {source}: ssh-keygen cannot read the key of {line[:60]!r}"
        )
    return done.stdout.split()[1]


def _import_pgp(source: Path, block: str, gnupg: Path) -> frozenset[str]:
    """Import one armored block into our keyring, trusted there; its primary keys'
    fingerprints."""
    env = tool_env(gnupg.parent, gnupg)
    imported = subprocess.run(
        # No agent: importing public keys needs none, and starting one can fail.
        ["gpg", "--batch", "--no-autostart", "--status-fd", "1", "--import"],
        input=block, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False,
    )  # fmt: skip
    fingerprints = frozenset(
        line.split()[3] for line in imported.stdout.splitlines()
        if line.startswith("[GNUPG:] IMPORT_OK") and len(line.split()) > 3
    )  # fmt: skip
    problems = [line for line in imported.stdout.splitlines() if "IMPORT_PROBLEM" in line]
    if not fingerprints or problems:
        said = (imported.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ConfigurationError(
            f"--trusted-signers {source}: gpg cannot import an OpenPGP key block ({said})"
        )
    # Trusted in this keyring only (ultimate: these are the keys the operator named).
    trust = "".join(f"{fpr}:6:\n" for fpr in sorted(fingerprints))
    subprocess.run(
        ["gpg", "--batch", "--no-autostart", "--import-ownertrust"], input=trust,
        capture_output=True,
        text=True, timeout=TIMEOUT, env=env, check=True,
    )  # fmt: skip
    return fingerprints

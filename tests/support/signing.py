"""Real signing keys in temporary homes: ssh-keygen and gpg, never the user's own.

A `Keys` holds an operator's SSH key, a stranger's SSH key, an OpenPGP key and an
OpenPGP key that expires seconds after it signs; `commit` makes a commit signed (or
not) by any of them, with git told everything on its command line (no global
configuration is read or touched).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


class Keys:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "signer-home"
        self.gnupg = self.home / "gnupg"
        self.gnupg.mkdir(parents=True, mode=0o700)
        self.ssh = self._ssh_key("operator", "ops@example.com")
        self.stranger = self._ssh_key("stranger", "eve@example.com")
        self.pgp = self._pgp_key("Pgp Operator <pgp@example.com>", "2y")
        self._expiring: str | None = None

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "GNUPGHOME": str(self.gnupg),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "Ada Operator",
            "GIT_AUTHOR_EMAIL": "ops@example.com",
            "GIT_COMMITTER_NAME": "Ada Operator",
            "GIT_COMMITTER_EMAIL": "ops@example.com",
        }

    def _ssh_key(self, name: str, email: str) -> Path:
        path = self.home / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", email, "-f",
                        str(path)], check=True, env=self.env())  # fmt: skip
        return path

    def _pgp_key(self, uid: str, expire: str) -> str:
        command = ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519",
                   "sign", expire]  # fmt: skip
        subprocess.run(command, check=True, env=self.env(), capture_output=True)
        listed = subprocess.run(["gpg", "--with-colons", "--list-keys", uid], check=True,
                                env=self.env(), capture_output=True, text=True).stdout  # fmt: skip
        return next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr"))

    def expiring(self, *, fresh: bool = False) -> str:
        """An OpenPGP key that expires a few seconds after it is made (made once, or
        again with `fresh`)."""
        if self._expiring is None or fresh:
            self._made = getattr(self, "_made", 0) + 1
            self._expiring = self._pgp_key(
                f"Short Lived {self._made} <short{self._made}@example.com>", "seconds=6"
            )
        return self._expiring

    def armored(self, fingerprint: str) -> str:
        return subprocess.run(["gpg", "--armor", "--export", fingerprint], check=True,
                              env=self.env(), capture_output=True, text=True).stdout  # fmt: skip

    def allowed_line(self, key: Path, principal: str = "ops@example.com") -> str:
        return f"{principal} {Path(f'{key}.pub').read_text().strip()}"

    def signers_file(self, *, ssh: bool = True, pgp: bool = True, expiring: bool = False) -> Path:
        parts = []
        if ssh:
            parts.append(self.allowed_line(self.ssh))
        if pgp:
            parts.append(self.armored(self.pgp))
        if expiring:
            parts.append(self.armored(self.expiring()))
        path = self.root / "trusted-signers"
        path.write_text("\n".join(parts) + "\n")
        return path

    def commit(self, repo: Path, message: str, *, by: str = "ssh") -> str:
        """Commit what is staged in `repo`: by "ssh", "stranger", "pgp", "expiring" or
        "none" (unsigned)."""
        options: list[str] = []
        if by in ("ssh", "stranger"):
            key = self.ssh if by == "ssh" else self.stranger
            options = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}.pub"]
        elif by in ("pgp", "expiring"):
            fpr = self.pgp if by == "pgp" else self.expiring()
            options = ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={fpr}"]
        sign = ["-S"] if by != "none" else ["--no-gpg-sign"]
        git(repo, self.env(), *options, "add", "-A")
        git(repo, self.env(), *options, "commit", "-q", "--allow-empty", *sign, "-m", message)
        return git(repo, self.env(), "rev-parse", "HEAD").strip()

    def wait_expired(self) -> None:
        time.sleep(7)

    def close(self) -> None:
        """Stop the gpg-agent that gpg started for this home (it outlives the test)."""
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env(), check=False,
                       capture_output=True)  # fmt: skip


def git(repo: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


def tamper(repo: Path, env: dict[str, str]) -> str:
    """Rewrite HEAD's message keeping its signature header: the signature no longer
    matches (a commit changed after it was signed). Returns the new sha."""
    raw = git(repo, env, "cat-file", "commit", "HEAD")
    changed = raw.replace("\n\n", "\n\nchanged after signing: ", 1) if "gpgsig" in raw else raw
    command = ["git", "-C", str(repo), "hash-object", "-t", "commit", "-w", "--stdin"]
    done = subprocess.run(command, input=changed, env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    sha = done.stdout.strip()
    git(repo, env, "update-ref", "HEAD", sha)
    return sha

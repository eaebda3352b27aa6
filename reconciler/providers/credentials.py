"""Credential references resolved to values, at the last moment and nowhere else.

Owns: reading `{env: NAME}` and `{file: PATH}` references (DESIGN §2). Relative file
paths are looked up in `$CREDENTIALS_DIRECTORY` so systemd's `LoadCredential=` works.
Must not: log, store or put a secret value in an exception message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from reconciler.errors import ConfigurationError
from reconciler.model import SecretRef
from reconciler.providers.hostpolicy import check_credential_file


def resolve_secret(ref: SecretRef, environ: Mapping[str, str] = os.environ) -> str:
    if ref.source == "env":
        value = environ.get(ref.name)
        if not value:
            raise ConfigurationError(f"credential environment variable {ref.name} is not set")
        return value
    if ref.source == "file":
        path = Path(ref.name)
        if not path.is_absolute():
            # A bare name is a systemd credential (LoadCredential=): never the cwd's file.
            directory = environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigurationError(
                    f"credential {ref.name!r} is a systemd credential name, but "
                    "$CREDENTIALS_DIRECTORY is not set (run under systemd or use an absolute path)"
                )
            path = Path(directory) / path
        path = Path(check_credential_file(str(path), environ=environ))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"credential file {path} cannot be read: {exc.strerror}"
            ) from None
        if not value:
            raise ConfigurationError(f"credential file {path} is empty")
        return value
    raise ConfigurationError(f"unknown credential source {ref.source!r}")

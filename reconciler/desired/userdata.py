"""Files referenced from the desired state: containment in the root, and user data.

Owns: deciding whether a relative path stays inside the desired-state directory
(no absolute paths, no `..`, no symlink escape) and reading user-data files within
their limits (exists, UTF-8, at most 16 KiB).
Must not: put file contents in any message (user data may hold secrets), follow a
path out of the root, or read anything that was not referenced.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

from reconciler.desired.files import read_regular_file
from reconciler.desired.schema import check_str
from reconciler.desired.yamlsource import YNode
from reconciler.errors import InvalidValue, Refused

MAX_USER_DATA_BYTES: Final = 16 * 1024


def load_user_data(node: YNode, *, root: Path, cache: dict[str, str]) -> tuple[str, str]:
    """Return (relative path, contents) for a `user_data:` value, or raise InvalidValue.

    `cache` holds contents already read in this load, so a script shared by many
    services is read (and checked) once.
    """
    relative = check_str(node)
    if relative in cache:
        return relative, cache[relative]
    # Both separators count: a desired state written on one OS is read on another.
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or relative.startswith(("/", "\\"))
        or PureWindowsPath(relative).drive
    ):
        raise InvalidValue(
            f"user data path {relative!r} is absolute; give a path relative to the "
            "desired-state directory, e.g. userdata/web.sh"
        )
    if ".." in PureWindowsPath(relative).parts:
        raise InvalidValue(
            f"user data path {relative!r} contains '..'; paths must stay inside the root"
        )
    try:
        raw = read_regular_file(
            root, root / relative, limit=MAX_USER_DATA_BYTES,
            limit_text=f"the limit is {MAX_USER_DATA_BYTES} bytes (16 KiB)",
        )  # fmt: skip
    except Refused as exc:
        what = "path" if str(exc).startswith("resolves") else "file"
        hint = " (paths are relative to the root)" if str(exc) == "does not exist" else ""
        raise InvalidValue(f"user data {what} {relative!r} {exc}{hint}") from None
    try:
        contents = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue(
            f"user data file {relative!r} is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    cache[relative] = contents
    return relative, contents


def display_path(root: str, *parts: str) -> str:
    """The path shown to operators: the root as given, joined with the relative parts."""
    return os.path.join(root, *parts)

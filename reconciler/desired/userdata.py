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
from reconciler.desired.schema import Reporter, get_str
from reconciler.desired.yamlsource import YNode
from reconciler.errors import Refused

MAX_USER_DATA_BYTES: Final = 16 * 1024


def read_user_data(
    reporter: Reporter, node: YNode, *, path: str, root: Path, cache: dict[str, str]
) -> tuple[str, str] | None:
    """Return (relative path, contents) for a `user_data:` value, or report why not.

    `cache` holds contents already read in this load, so a script shared by many
    services is read (and checked) once.
    """
    relative = get_str(reporter, node, path=path)
    if relative is None:
        return None
    if relative in cache:
        return relative, cache[relative]

    def refuse(message: str) -> None:
        reporter.add(node.line, path, message)

    # Both separators count: a desired state written on one OS is read on another.
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or relative.startswith(("/", "\\"))
        or PureWindowsPath(relative).drive
    ):
        refuse(
            f"user data path {relative!r} is absolute; give a path relative to the "
            "desired-state directory, e.g. userdata/web.sh"
        )
        return None
    if ".." in PureWindowsPath(relative).parts:
        refuse(f"user data path {relative!r} contains '..'; paths must stay inside the root")
        return None
    try:
        raw = read_regular_file(
            root, root / relative, limit=MAX_USER_DATA_BYTES,
            limit_text=f"the limit is {MAX_USER_DATA_BYTES} bytes (16 KiB)",
        )  # fmt: skip
    except Refused as exc:
        what = "path" if str(exc).startswith("resolves") else "file"
        hint = " (paths are relative to the root)" if str(exc) == "does not exist" else ""
        refuse(f"user data {what} {relative!r} {exc}{hint}")
        return None
    try:
        contents = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        refuse(f"user data file {relative!r} is not valid UTF-8 (bad byte at offset {exc.start})")
        return None
    cache[relative] = contents
    return relative, contents


def display_path(root: str, *parts: str) -> str:
    """The path shown to operators: the root as given, joined with the relative parts."""
    return os.path.join(root, *parts)

"""Reading a file of the desired state: only regular files inside the directory.

Owns: the one way the loader reads bytes from disk. A path is resolved (symlinks
included) and must stay inside the desired-state directory; what it names must be a
regular file (a FIFO would block the reader forever, a device could stream without
end, a directory or socket cannot be read); its size is capped before and while
reading. Every refusal is a `Refused` whose message says what the path is and why it
cannot be used, for the caller to locate (file, line, key).
Must not: follow a path out of the root, open anything that is not a regular file
(stat first, then re-check the opened descriptor), or put file contents in a message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.errors import Refused

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def kind_of(mode: int) -> str:
    """What a file mode names, in words: "a FIFO (named pipe)", "a regular file"."""
    return _KINDS.get(stat.S_IFMT(mode), "a regular file" if stat.S_ISREG(mode) else "special")


def resolve_inside(root: Path, target: Path) -> str:
    """`target` with every symlink resolved, if it exists and stays inside `root`."""
    try:
        real_root = os.path.realpath(root, strict=True)
        real = os.path.realpath(target, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("is a symlink loop") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise Refused("does not exist") from None
        raise Refused(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if os.path.commonpath([real_root, real]) != real_root:
        raise Refused("resolves (through a symlink) outside the desired-state directory")
    return real


def read_regular_file(root: Path, target: Path, *, limit: int, limit_text: str) -> bytes:
    """The bytes of `target`, a regular file inside `root` of at most `limit` bytes."""
    real = resolve_inside(root, target)
    try:
        mode = os.stat(real).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(f"is {kind_of(mode)}, not a regular file")
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does
        # not wait for a writer; the descriptor is checked again below.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise Refused(f"is {kind_of(opened.st_mode)}, not a regular file")
        if opened.st_size > limit:
            raise Refused(f"is {opened.st_size} bytes; {limit_text}")
        chunks: list[bytes] = []
        left = limit + 1  # one byte more tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Refused(f"grew past the limit while being read; {limit_text}")
    return data


def directory_inside(root: Path, target: Path) -> str:
    """`target` resolved, if it is a directory inside `root` (else Refused)."""
    real = resolve_inside(root, target)
    mode = os.stat(real).st_mode
    if not stat.S_ISDIR(mode):
        raise Refused(f"is {kind_of(mode)}, not a directory")
    return real

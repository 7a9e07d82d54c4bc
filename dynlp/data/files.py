"""Whole-or-nothing file writes and input-file checks shared by every writer and reader of dynlp.

`atomic_write` writes to a temporary file in the target's folder and renames it into place, so a
crash, a full disk, Ctrl-C or SIGTERM leave the old file or the new one and no temporary file.
Imports the standard library only; it must not import anything from dynlp outside dynlp.data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

UTF8_BOM = "\ufeff"


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on a clean exit it is flushed, synced
    and renamed to `path`, on any exception (KeyboardInterrupt included) it is removed.

    The file is created with mode 0666 less the umask, as `open` would. An OSError raised while
    writing (a full disk) is raised again naming `path`."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        newline = "" if "b" not in mode else None
        with os.fdopen(descriptor, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        if error.filename is not None and str(error.filename) != str(temporary):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        _remove(temporary)
        raise


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Remove the temporary files of `atomic_write` for the given file names in `folder` whose
    writing process is gone (a SIGKILL leaves them); returns what was removed."""
    removed = []
    for name in names:
        for path in Path(folder).glob(f".{name}.*.tmp"):
            pid = path.name[len(name) + 2:].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(path)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text (LF line endings kept as they are) whole or not at all."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def input_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as an input file (None when it can): missing, a directory,
    a FIFO or another kind of special file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a folder)"
    except OSError as error:
        return error.strerror or str(error)
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def read_input_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an input file; OSError naming the path and the problem for anything that is
    not a readable regular file (a FIFO is refused before it is opened, so reading never hangs)."""
    problem = input_problem(path)
    if problem is not None:
        raise OSError(_errno_of(problem), problem, str(path))
    with open(path, "rb") as handle:
        return handle.read()


def _errno_of(problem: str) -> int:
    if problem.startswith("no such file"):
        return errno.ENOENT
    if problem.startswith("is a directory"):
        return errno.EISDIR
    return errno.EINVAL

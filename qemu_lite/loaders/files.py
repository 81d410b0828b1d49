"""Reading the host files a machine boots from (kernel, initrd, modules, BIOS).

Every failure is an :class:`InputFileError` whose one-line message says what
the file was for and what is wrong with it: missing, a directory, not a
regular file (a FIFO, /dev/null), empty, unreadable.  Files are opened with
``O_NONBLOCK`` so that a FIFO given by mistake is refused instead of blocking.
"""

from __future__ import annotations

import os
import stat


class InputFileError(ValueError):
    """An input file that cannot be used, with a message naming it."""


def file_problem(path: str | os.PathLike[str], *, allow_block_device: bool = False,
                 allow_empty: bool = False) -> str | None:
    """Why ``path`` cannot serve as an input file, or None when it looks usable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "No such file"
    except NotADirectoryError:
        return "No such file (a parent is not a directory)"
    except PermissionError:
        return "permission denied"
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte
        return getattr(exc, "strerror", None) or str(exc)
    return _stat_problem(st, allow_block_device, allow_empty)


def _stat_problem(st: os.stat_result, allow_block_device: bool = False,
                  allow_empty: bool = False) -> str | None:
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if stat.S_ISBLK(st.st_mode) and allow_block_device:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0 and not allow_empty:
        return "file is empty"
    return None


def read_input_file(path: str | os.PathLike[str], what: str, *,
                    allow_empty: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (non-empty unless ``allow_empty``);
    ``what`` names it in errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(path).__name__}")
    name = os.fspath(path)
    problem = file_problem(name, allow_empty=allow_empty)
    if problem is not None:
        raise InputFileError(f"cannot open {what} '{name}': {problem}")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputFileError(f"cannot open {what} '{name}': {exc.strerror}") from None
    try:
        # The file may have been replaced since the stat.
        problem = _stat_problem(os.fstat(fd), allow_empty=allow_empty)
        if problem is not None:
            raise InputFileError(f"cannot open {what} '{name}': {problem}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise InputFileError(f"cannot read {what} '{name}': {exc.strerror}") from None
    finally:
        os.close(fd)


def input_file_size(path: str | os.PathLike[str], what: str, *,
                    allow_empty: bool = False) -> int:
    """The size of the file :func:`read_input_file` would read, without reading it."""
    problem = file_problem(path, allow_empty=allow_empty)
    if problem is not None:
        raise InputFileError(f"cannot open {what} '{os.fspath(path)}': {problem}")
    return os.stat(path).st_size

"""User-facing errors.

Every problem a user can cause (a missing folder, a corrupt image, an unknown model name,
a wrong tensor shape) raises a subclass of :class:`SaliencekitError` with a message that
names the offending thing and says what would be valid. The command line tool prints the
message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import errno
import os


class SaliencekitError(Exception):
    """Base class of every error caused by the user's input."""


class DataError(SaliencekitError, ValueError):
    """A dataset folder, image or mask is missing, empty or unreadable."""


class RunDirError(SaliencekitError, FileNotFoundError):
    """A path is not a saliencekit run directory (or one is incomplete)."""


class OutputError(SaliencekitError, OSError):
    """An output cannot be written: the disk is full, the folder is read-only or not ours, a name is too long.

    Raised by the atomic writers (:mod:`saliencekit._atomic`) with a message naming the file and the cause; what was
    being written is removed, and the previous file (if any) is left as it was.
    """


class UnknownNameError(SaliencekitError, KeyError):
    """A registry name (model, method, check, layer) does not exist.

    The message lists the valid names.
    """

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.valid = list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.args[0]


class InputError(SaliencekitError, ValueError):
    """A tensor given to a method or check has the wrong shape, dtype or values."""


class UnknownChoiceError(UnknownNameError, InputError):
    """An option's value is not one of its names (e.g. ``baseline="grey"``): an unknown name and bad input at once.

    The message lists the valid names.
    """


# What the operating system's refusals to write mean for the user, and what to do (errno -> (cause, remedy)).
_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full (no space left on the device)", "free some space or write to another disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or write to another disk"),
    errno.EFBIG: ("the file is too large for the file system", "write to another disk"),
    errno.EROFS: ("the file system is read-only", "choose a writable output folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter output path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another output path"),
}


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the system refusing a file operation for a reason the user controls (a full disk, a
    read-only or foreign folder, a name too long), as opposed to a bug."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_FAILURES


def output_error(exc: OSError, path: str | os.PathLike[str] | None = None, doing: str = "write") -> OutputError:
    """The one-line :class:`OutputError` for an operating-system error while writing ``path``.

    >>> print(output_error(OSError(errno.EROFS, "Read-only file system"), "runs/a/checkpoint.pt"))
    cannot write runs/a/checkpoint.pt: the file system is read-only; choose a writable output folder
    """
    if isinstance(exc, OutputError):
        return exc
    where = path if path is not None else exc.filename
    cause, remedy = _WRITE_FAILURES.get(exc.errno, (exc.strerror or str(exc), "check the output path"))
    return OutputError(f"cannot {doing} {where}: {cause}; {remedy}")

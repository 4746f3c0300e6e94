"""User-facing errors.

Every problem a user can cause (a missing folder, a corrupt image, an unknown model name,
a wrong tensor shape) raises a subclass of :class:`SaliencekitError` with a message that
names the offending thing and says what would be valid. The command line tool prints the
message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class SaliencekitError(Exception):
    """Base class of every error caused by the user's input."""


class DataError(SaliencekitError, ValueError):
    """A dataset folder, image or mask is missing, empty or unreadable."""


class RunDirError(SaliencekitError, FileNotFoundError):
    """A path is not a saliencekit run directory (or one is incomplete)."""


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

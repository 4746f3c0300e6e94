"""Atomic file writes: write to a temporary name in the same folder, then rename; whole jobs all or nothing.

Every file saliencekit produces goes through these helpers, which give three guarantees:

- **One file**: a crash (or an exception) in the middle of a write leaves the previous file intact and no
  half-written file behind (:func:`atomic_path`).
- **One job** (:func:`all_or_nothing`): inside the block, every file written here is journaled; if the block
  fails (an error, Ctrl-C, SIGTERM), each file it replaced gets its previous content back and each file it
  created is removed, with the folders it created, so the outputs are exactly as before the job. The command line
  tool runs every command in one. The journal keeps a hard link to each replaced file until the job ends (no
  copy, no extra space).
- **One folder** (:func:`atomic_dir`): a folder written as a whole (a generated dataset) is built under a
  temporary name beside it and its entries are moved into place at the end.

A write the operating system refuses (a full disk, a read-only or foreign folder, a name too long) raises
:class:`~saliencekit.errors.OutputError` naming the file and the cause, instead of a bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from saliencekit.errors import is_environment_error, output_error


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


@dataclass
class _Journal:
    """What one :func:`all_or_nothing` block changed, in order: (file, hard link to its previous content or None
    when the file is new), and the folders it created."""

    pid: int
    files: list[tuple[Path, Path | None]] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    seen: set[Path] = field(default_factory=set)


_journals: list[_Journal] = []  # the open blocks, innermost last (process-wide: worker threads write into them)
_lock = threading.RLock()
_counter = itertools.count()


def _journal() -> _Journal | None:
    """The innermost open block of this process (a forked worker process journals nothing: its parent cannot
    undo its files, and they are its parent's to manage)."""
    with _lock:
        return _journals[-1] if _journals and _journals[-1].pid == os.getpid() else None


def _make_parents(folder: Path) -> None:
    """``mkdir -p folder``, recording in the open block the folders that did not exist."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_environment_error(exc):
            raise output_error(exc, folder, "create the folder") from exc
        raise
    journal = _journal()
    if journal is not None:
        with _lock:
            journal.folders.extend(reversed(missing))


def make_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and its parents (an open :func:`all_or_nothing` block removes them again if it fails).

    Raises:
        OutputError: the folder cannot be created (read-only or foreign parent, full disk, a file in the way).
    """
    folder = Path(folder)
    _make_parents(folder)
    return folder


def _record(path: Path) -> None:
    """Before ``path`` is replaced inside an open block: keep a hard link to its current content (once per block)."""
    journal = _journal()
    if journal is None:
        return
    key = path.absolute()
    with _lock:
        if key in journal.seen:
            return
        journal.seen.add(key)
    backup = None
    if path.is_file():
        backup = path.parent / f".{path.name[:40]}.{os.getpid()}.{next(_counter)}.previous"
        try:
            os.link(path, backup)  # the previous content, kept under a second name (no copy)
        except OSError as exc:
            if is_environment_error(exc) and exc.errno not in (errno.EPERM, errno.EACCES):
                raise
            shutil.copy2(path, backup)  # a file system without hard links
    with _lock:
        journal.files.append((key, backup))


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Keep the files written inside the block only if it finishes.

    If the block raises anything (including ``KeyboardInterrupt`` and the command line tool's SIGTERM), every file
    written through this module inside it is put back as it was (replaced files get their previous content,
    new files are removed, with the folders created for them) before the exception goes on. Blocks nest: an
    inner block that finishes hands its files to the outer one. Files written by other processes are not tracked.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_text(d / "a.txt", "old")
    >>> try:
    ...     with all_or_nothing():
    ...         _ = write_text(d / "a.txt", "new")
    ...         _ = write_text(d / "b.txt", "new")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> (d / "a.txt").read_text(), (d / "b.txt").exists()
    ('old', False)
    """
    journal = _Journal(pid=os.getpid())
    with _lock:
        _journals.append(journal)
    try:
        yield
    except BaseException:
        _pop(journal)
        _undo(journal)
        raise
    _pop(journal)
    outer = _journal()
    if outer is not None:
        with _lock:
            for path, backup in journal.files:
                if path in outer.seen:  # the outer block already holds an older version
                    if backup is not None:
                        _discard(backup)
                    continue
                outer.seen.add(path)
                outer.files.append((path, backup))
            outer.folders.extend(journal.folders)
        return
    for _, backup in journal.files:
        if backup is not None:
            _discard(backup)


def _discard(backup: Path) -> None:
    """Delete a previous version kept for an undo (a file, or a folder replaced by :func:`atomic_dir`)."""
    with contextlib.suppress(OSError):
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup)
        else:
            backup.unlink()


def _pop(journal: _Journal) -> None:
    with _lock:
        if journal in _journals:
            _journals.remove(journal)


def _undo(journal: _Journal) -> None:
    for path, backup in reversed(journal.files):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # a folder written by atomic_dir
            else:
                path.unlink(missing_ok=True)
            if backup is not None:
                os.replace(backup, path)
    for folder in reversed(journal.folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: files others put there stay


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file keeps ``path``'s suffix so that libraries choosing a format from the
    extension (matplotlib, PIL) still work. On any exception the temporary file is removed
    and ``path`` is left as it was.

    Raises:
        OutputError: the system refused the write (full disk, read-only folder, name too long...).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "a.txt").read_text()
    'hello'
    """
    path = Path(path)
    _make_parents(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:
        if is_environment_error(exc):
            raise output_error(exc, path) from exc
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; give the file the usual mode
        _record(path)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_environment_error(exc):
            raise output_error(exc, path) from exc  # type: ignore[arg-type]
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` to fill; on success its entries move into ``path``.

    Each entry of the temporary folder replaces the entry of the same name in ``path`` (created if missing), and
    the entries of ``path`` named in ``replaces`` are removed (an earlier version's folders that the new one lacks);
    other entries of ``path`` stay. The replaced entries are deleted only at the end (or, in an open
    :func:`all_or_nothing` block, when the block finishes: they come back if it fails). On any exception the
    temporary folder is deleted and ``path`` is left as it was.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "data"
    >>> with atomic_dir(d) as tmp:
    ...     _ = (tmp / "a.txt").write_text("hello")
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt']
    """
    path = Path(path)
    _make_parents(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        if is_environment_error(exc):
            raise output_error(exc, path) from exc
        raise
    moved = _Journal(pid=os.getpid())  # what the final moves did, undone if they are interrupted
    try:
        yield tmp
        for name in sorted({*os.listdir(tmp), *replaces}):
            target, new = path / name, tmp / name
            old = None
            if target.exists() or target.is_symlink():
                old = path / f".{name[:40]}.{os.getpid()}.{next(_counter)}.previous"
                os.replace(target, old)
            moved.files.append((target.absolute(), old))
            if new.exists() or new.is_symlink():
                os.replace(new, target)
        tmp.rmdir()
    except BaseException as exc:
        _undo(moved)
        shutil.rmtree(tmp, ignore_errors=True)
        if is_environment_error(exc):
            raise output_error(exc, path) from exc  # type: ignore[arg-type]
        raise
    journal = _journal()
    for key, old in moved.files:
        if journal is not None and key not in journal.seen:
            with _lock:
                journal.seen.add(key)
                journal.files.append((key, old))  # the previous entry comes back if the block fails
        elif old is not None:
            _discard(old)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``writer(file)`` on a temporary binary file, flush it to disk, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (NaN and infinities are written as ``null``)."""
    return write_text(path, json.dumps(_finite(obj), indent=indent, sort_keys=False) + "\n")


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Atomically save a matplotlib figure (format from the suffix of ``path``; no suffix: PNG).

    Raises:
        InputError: the suffix names no format matplotlib writes (listing those it does), before anything is written.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    from saliencekit.errors import InputError

    kwargs.setdefault("dpi", 110)
    kwargs.setdefault("bbox_inches", "tight")
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise InputError(f"cannot save a figure as {path}: unknown image format {fmt!r}; valid suffixes: "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
    return Path(path)


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON is valid for browsers and ``json.loads``."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj

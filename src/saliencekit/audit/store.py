"""The audit store: every image's saliency maps in one chunked, compressed zarr (v3) store.

Layout of ``OUT/maps.zarr`` (N images of H x W, C images per chunk, K classes)::

    maps/<label>       (N, H, W)  float16 (default) or float32, chunks (C, H, W), zstd: the raw maps as stored
    scales/<label>     (N,)       float32: per-image factor, map = stored * scale (1 for float32 stores)
    index              (N,)       int64: the image's position (0 .. N-1)
    files              (N,)       string: the image file relative to the data folder
    labels             (N,)       int64: the class of the image's folder (index into the class names)
    predictions        (N,)       int64: the model's predicted class
    probabilities      (N, K)     float32: the model's class probabilities
    targets            (N,)       int64: the class whose saliency was computed
    done               (N / C,)   uint8: 1 once every array of that chunk is written (chunks of 1, uncompressed)

Every per-image array is chunked along the images like the maps, so the images of chunk ``c`` live in
the ``c``-th chunk file of each array and nothing else: two processes writing different chunks never
touch the same file. The group's ``saliencekit_audit`` attribute holds the model's identity (weights
fingerprint, class names, preprocessing), the data's identity, the method specs and parameters, the
dtype, the chunk and batch sizes, the target rule and the seed rule. Nothing in the store depends on
the time, the machine or which process computed a chunk.

float16 maps are stored multiplied by a power of two per image (see
:func:`saliencekit.audit._job.encode_maps`): :attr:`AuditStore.maps` gives them back in float32,
scaled; ``store.group["maps/<label>"]`` is the raw zarr array.

>>> store = open_store("audit")  # doctest: +SKIP
>>> store.maps["gradcam"][1000:1100].shape  # reads only the chunks holding images 1000-1099  # doctest: +SKIP
(100, 256, 256)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saliencekit.errors import InputError, SaliencekitError

STORE_NAME = "maps.zarr"
FORMAT = "saliencekit-audit-store"
FORMAT_VERSION = 1
ATTR = "saliencekit_audit"
_PER_IMAGE = ("predictions", "probabilities", "targets")


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency of the audit extra
        raise InputError("the audit store needs zarr (v3): pip install saliencekit[audit]") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise InputError(f"the audit store needs zarr >= 3 (found {zarr.__version__}): pip install saliencekit[audit]")
    return zarr


def store_path(out: str | os.PathLike[str]) -> Path:
    """The store inside an audit folder (``OUT/maps.zarr``); a path ending in ``.zarr`` is the store itself."""
    out = Path(out)
    return out if out.suffix == ".zarr" else out / STORE_NAME


class MapArray:
    """One method's maps, read lazily and returned in float32 with their per-image scale applied.

    Indexing works like numpy on the first (image) axis: an integer, a slice or a list of indices,
    optionally followed by row and column selections. Only the chunks holding the chosen images are read.

    Attributes:
        raw: the zarr array as stored.
        scale: the zarr array of per-image factors.
    """

    def __init__(self, raw: Any, scale: Any):
        self.raw = raw
        self.scale = scale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0]
        if isinstance(rows, list | np.ndarray):
            rows = np.asarray(rows)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            rest = tuple(k if not isinstance(k, int) else slice(k, k + 1) for k in key[1:])
            data = self.raw.get_orthogonal_selection((rows, *rest)).astype(np.float32)
            scale = self.scale.get_orthogonal_selection((rows,))
            squeeze = tuple(i + 1 for i, k in enumerate(key[1:]) if isinstance(k, int))
            return np.squeeze(data * scale.reshape(-1, *([1] * (data.ndim - 1))), axis=squeeze)
        data = np.asarray(self.raw[key], dtype=np.float32)
        scale = np.asarray(self.scale[rows], dtype=np.float32)
        if scale.ndim == 0:
            return data * scale
        return data * scale.reshape(-1, *([1] * (data.ndim - 1)))

    def __repr__(self) -> str:
        return f"MapArray(shape={self.shape}, stored as {self.raw.dtype})"


class AuditStore:
    """An audit store opened for reading (see :func:`open_store`).

    Attributes:
        path: the ``.zarr`` folder.
        group: the zarr group.
        meta: the ``saliencekit_audit`` attribute (identity, info, sizes).
        maps: method label -> :class:`MapArray` (lazy).
        files, labels, predictions, probabilities, targets, index: the per-image zarr arrays (lazy).
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r"):
        zarr = _zarr()
        self.path = store_path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputError(f"{self.path} is not an audit store (no zarr.json); write one with `saliencekit audit`")
        self.group = zarr.open_group(str(self.path), mode=mode)
        meta = self.group.attrs.get(ATTR)
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
            raise InputError(f"{self.path} is a zarr store but not a saliencekit audit store")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"{self.path} was written by a newer saliencekit (format {meta['format_version']})")
        self.meta: dict[str, Any] = dict(meta)
        self.maps: dict[str, MapArray] = {
            label: MapArray(self.group[f"maps/{label}"], self.group[f"scales/{label}"]) for label in meta["methods"]
        }
        self.files = self.group["files"]
        self.labels = self.group["labels"]
        self.predictions = self.group["predictions"]
        self.probabilities = self.group["probabilities"]
        self.targets = self.group["targets"]
        self.index = self.group["index"]

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.meta["identity"])

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.meta["info"])

    @property
    def preprocessing(self) -> Any:
        """The model's :class:`~saliencekit.data.Preprocessing` (how files became the explained inputs)."""
        from saliencekit.data.preprocess import Preprocessing

        try:
            return Preprocessing.from_dict(self.meta["identity"]["model"]["preprocessing"])
        except (KeyError, TypeError, ValueError):
            return Preprocessing(size=self.image_shape, resize="stretch")

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["identity"]["model"]["class_names"])

    @property
    def methods(self) -> list[str]:
        return list(self.meta["methods"])

    @property
    def n_images(self) -> int:
        return int(self.meta["n_images"])

    @property
    def chunk_size(self) -> int:
        return int(self.meta["chunk_size"])

    @property
    def n_chunks(self) -> int:
        return int(self.meta["n_chunks"])

    @property
    def image_shape(self) -> tuple[int, int]:
        h, w = self.meta["image_shape"]
        return int(h), int(w)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """First and one-past-last image of ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_images)

    @property
    def done(self) -> np.ndarray:
        """Per chunk, whether it is completely written (bool, one per chunk)."""
        return np.asarray(self.group["done"][:]).astype(bool)

    @property
    def complete(self) -> bool:
        """Whether every chunk is written."""
        return bool(self.done.all())

    def xarray(self) -> Any:
        """The per-image arrays and the raw maps as a lazy ``xarray.Dataset`` (needs xarray).

        Map variables are named ``maps/<label>`` (raw, as stored) and ``scales/<label>``.
        """
        try:
            import xarray as xr
        except ImportError:
            raise InputError("store.xarray() needs xarray: pip install xarray") from None
        parts = [xr.open_zarr(str(self.path), consolidated=False, zarr_format=3)]
        for sub in ("maps", "scales"):
            ds = xr.open_zarr(str(self.path), group=sub, consolidated=False, zarr_format=3)
            parts.append(ds.rename({k: f"{sub}/{k}" for k in ds.data_vars}))
        return xr.merge(parts, compat="override")

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{int(self.done.sum())}/{self.n_chunks} chunks"
        return (f"AuditStore({str(self.path)!r}, {self.n_images} images {self.image_shape}, methods={self.methods}, "
                f"{state})")


def open_store(path: str | os.PathLike[str]) -> AuditStore:
    """Open an audit store (the ``--out`` folder of ``saliencekit audit`` or its ``maps.zarr``) lazily.

    Raises:
        InputError: ``path`` holds no audit store.
    """
    return AuditStore(path)


# ------------------------------------------------------------------------------------------- writing


def create_store(path: Path, ctx: Any) -> None:
    """Create an empty store for the audit context ``ctx`` (an :class:`~saliencekit.audit._job.AuditContext`).

    The store is built under a temporary name beside ``path`` and renamed onto it when its metadata and
    its static arrays (index, files, labels) are written, so a crash leaves either no store or a
    complete empty one.
    """
    zarr = _zarr()
    from zarr.codecs import ZstdCodec

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    job = ctx.job
    n, c = ctx.n_images, job.chunk_size
    h, w = ctx.preprocessing.size
    k = len(ctx.class_names)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "n_images": n, "chunk_size": c, "n_chunks": ctx.n_chunks,
        "image_shape": [h, w], "methods": list(job.methods), "identity": ctx.identity, "info": ctx.info,
    }
    try:
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes={ATTR: meta})
        zstd = ZstdCodec(level=3)
        for label in job.methods:
            g.create_array(f"maps/{label}", shape=(n, h, w), chunks=(c, h, w), dtype=job.dtype, fill_value=0,
                           compressors=zstd, dimension_names=("image", "y", "x"))
            g.create_array(f"scales/{label}", shape=(n,), chunks=(c,), dtype="float32", fill_value=0,
                           compressors=zstd, dimension_names=("image",))
        g.create_array("index", shape=(n,), chunks=(c,), dtype="int64", fill_value=-1, compressors=zstd,
                       dimension_names=("image",))[:] = np.arange(n, dtype=np.int64)
        g.create_array("files", shape=(n,), chunks=(c,), dtype=str, compressors=zstd,
                       dimension_names=("image",))[:] = np.array(ctx.files, dtype=object)
        g.create_array("labels", shape=(n,), chunks=(c,), dtype="int64", fill_value=-1, compressors=zstd,
                       dimension_names=("image",))[:] = ctx.labels
        g.create_array("predictions", shape=(n,), chunks=(c,), dtype="int64", fill_value=-1, compressors=zstd,
                       dimension_names=("image",))
        g.create_array("targets", shape=(n,), chunks=(c,), dtype="int64", fill_value=-1, compressors=zstd,
                       dimension_names=("image",))
        g.create_array("probabilities", shape=(n, k), chunks=(c, k), dtype="float32", fill_value=0,
                       compressors=zstd, dimension_names=("image", "class"))
        g.create_array("done", shape=(ctx.n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None,
                       dimension_names=("chunk",))
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(path: Path) -> None:
    """Delete what a killed writer can leave behind: zarr's ``*.partial`` temporary files inside the store and
    unfinished temporary stores beside it."""
    path = Path(path)
    if path.is_dir():
        for p in path.rglob("*.partial"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between a stored identity and the requested one, one phrase per setting."""
    out: list[str] = []
    for key in dict.fromkeys([*stored, *now]):
        a, b = stored.get(key), now.get(key)
        if a == b:
            continue
        if key == "model" and isinstance(a, Mapping) and isinstance(b, Mapping):
            parts = []
            if a.get("fingerprint") != b.get("fingerprint"):
                parts.append(f"weights (fingerprint {str(a.get('fingerprint'))[:12]} stored, "
                             f"{str(b.get('fingerprint'))[:12]} now)")
            for sub in ("class_names", "preprocessing"):
                if a.get(sub) != b.get(sub):
                    parts.append(f"{sub} ({a.get(sub)} stored, {b.get(sub)} now)")
            out.append("model: " + "; ".join(parts))
        elif key == "data" and isinstance(a, Mapping) and isinstance(b, Mapping):
            if a.get("n_images") != b.get("n_images"):
                out.append(f"data: {a.get('n_images')} images stored, {b.get('n_images')} now")
            else:
                out.append("data: the same number of images but other files, classes or file sizes")
        elif key == "methods" and isinstance(a, Mapping) and isinstance(b, Mapping):
            if list(a) != list(b):
                out.append(f"methods: {', '.join(a)} stored, {', '.join(b)} now")
            else:
                changed = [label for label in a if a[label] != b[label]]
                out.append("method options of " + ", ".join(
                    f"{label} ({_spec(a[label])} stored, {_spec(b[label])} now)" for label in changed))
        else:
            out.append(f"{key}: {a!r} stored, {b!r} now")
    return out


def _spec(spec: Mapping[str, Any]) -> str:
    opts = ", ".join(f"{k}={v!r}" for k, v in spec.get("options", {}).items())
    return f"{spec.get('method')}({opts})"


class ChunkWriter:
    """Writes chunks into an existing store; the chunk's ``done`` flag is written last."""

    def __init__(self, path: str | os.PathLike[str]):
        zarr = _zarr()
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r+")
        meta = self.group.attrs[ATTR]
        self.chunk_size = int(meta["chunk_size"])
        self.n_images = int(meta["n_images"])
        self.methods: list[str] = list(meta["methods"])
        self._arrays = {name: self.group[name] for name in (*_PER_IMAGE, "done")}
        self._maps = {label: (self.group[f"maps/{label}"], self.group[f"scales/{label}"]) for label in self.methods}

    def write(self, result: Any) -> None:
        """Write a :class:`~saliencekit.audit._job.ChunkResult`, then mark its chunk done."""
        c = result.chunk
        start = c * self.chunk_size
        stop = min(start + self.chunk_size, self.n_images)
        for label in self.methods:
            maps, scales = self._maps[label]
            maps[start:stop] = result.maps[label]
            scales[start:stop] = result.scales[label]
        self._arrays["predictions"][start:stop] = result.predictions
        self._arrays["probabilities"][start:stop] = result.probabilities
        self._arrays["targets"][start:stop] = result.targets
        self._arrays["done"][c] = 1

    def done(self) -> np.ndarray:
        return np.asarray(self._arrays["done"][:]).astype(bool)


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the store while writing it (released by the OS if the process dies).

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so the DataLoader
    workers it forks do not inherit it and a killed audit's orphaned workers cannot keep it held.

    Raises:
        InputError: another process is writing the same store.
    """
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    busy = InputError(f"another audit is writing {path} right now; wait for it to finish or use another --out folder")
    if key in _HELD:  # record locks never conflict within one process: a second writer here is refused by this set
        raise busy
    fh = open(lock, "a+")
    try:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise busy from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        fh.close()


_HELD: set[str] = set()  # lock files this process holds


def differing_files(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """Relative paths whose bytes differ between two folders (or exist in only one): empty when bit-identical."""
    a, b = Path(a), Path(b)
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    return sorted((fa ^ fb) | {f for f in fa & fb if (a / f).read_bytes() != (b / f).read_bytes()})


def check_complete(store: AuditStore, what: str = "this") -> None:
    """Raise unless every chunk of the store is written."""
    if not store.complete:
        done = int(store.done.sum())
        raise SaliencekitError(f"the audit store {store.path} is incomplete ({done}/{store.n_chunks} chunks); run the "
                               f"same `saliencekit audit` command again to finish it before {what}")


__all__: Sequence[str] = ("AuditStore", "MapArray", "open_store", "store_path")

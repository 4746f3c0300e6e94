"""``run_audit``: explain every image of a dataset into a resumable store, on one machine or a Ray cluster.

>>> from saliencekit.audit import run_audit, open_store
>>> result = run_audit("runs/cxr", "data/cxr", "audit", methods=["gradcam", "smoothgrad"])  # doctest: +SKIP
>>> open_store("audit").maps["gradcam"][:10].shape  # doctest: +SKIP
(10, 256, 256)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliencekit.audit._job import AuditJob, load_context, normalize_methods
from saliencekit.audit.store import (
    STORE_NAME,
    AuditStore,
    create_store,
    differences,
    remove_leftovers,
    store_path,
    writer_lock,
)
from saliencekit.errors import InputError

ENGINES = ("local", "ray")
DEFAULT_AUDIT_METHODS = ("gradcam", "smoothgrad")
#: Files an audit writes beside the store (removed by ``overwrite``).
OUTPUTS = (STORE_NAME, "spray.json", "audit.html")


@dataclass
class AuditResult:
    """What :func:`run_audit` did.

    Attributes:
        out: the audit folder.
        store: the store's path.
        n_images: images in the store.
        n_chunks: chunks in the store.
        computed: chunk -> who computed it in this call (``"local"`` or a Ray worker's name).
        already_done: chunks that were complete before this call (a resumed job).
        retried: chunks computed again because the worker holding them died (Ray engine).
        seconds: wall-clock time of the computation.
        analysis: the SpRAy result (when analysed).
        page: the HTML page (when written).
    """

    out: Path
    store: Path
    n_images: int
    n_chunks: int
    computed: dict[int, str] = field(default_factory=dict)
    already_done: int = 0
    retried: list[int] = field(default_factory=list)
    seconds: float = 0.0
    images_computed: int = 0
    analysis: Any = None
    page: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_computed / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line: what was computed, how fast, and where it is."""
        size = sum(p.stat().st_size for p in self.store.rglob("*") if p.is_file()) / 2**20
        if not self.computed:
            return (f"the audit store {self.store} was already complete ({self.n_images} images, {self.n_chunks} "
                    f"chunks, {size:.1f} MiB); nothing to compute")
        resumed = f", {self.already_done} were already done" if self.already_done else ""
        retried = f", {len(self.retried)} retried after a worker died" if self.retried else ""
        return (f"audited {self.images_computed} images in {len(self.computed)} chunks{resumed}{retried} in "
                f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s); store {self.store} "
                f"({self.n_images} images, {size:.1f} MiB)")


def _resolve_device(device: str, here: bool = True) -> str:
    """The device's name; ``here=False`` (Ray actors on other machines) only checks that it parses."""
    import torch

    from saliencekit.device import resolve_device

    if here or device == "auto":
        return str(resolve_device(device))
    try:
        return str(torch.device(device))
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from None


def make_job(
    model: str | Path,
    data: str | Path,
    methods: Any = DEFAULT_AUDIT_METHODS,
    *,
    dtype: str = "float16",
    chunk_size: int = 32,
    batch_size: int = 32,
    target: str | int = "predicted",
    seed: int = 0,
    layer: str | None = None,
    device: str = "auto",
    device_here: bool = True,
) -> AuditJob:
    """The :class:`AuditJob` of these settings (paths made absolute, methods normalised, device resolved;
    ``device_here=False`` when the device is on other machines, e.g. Ray actors on GPU nodes)."""
    if not isinstance(model, str | Path):
        raise InputError(f"the model must be given as a path (a run directory), got {type(model).__name__}; an "
                         "audit's workers load the model themselves")
    return AuditJob(model_source=str(Path(model).resolve()), data_root=str(Path(data).resolve()),
                    methods=normalize_methods(methods), dtype=dtype, chunk_size=chunk_size, batch_size=batch_size,
                    target=target, seed=seed, layer=layer, device=_resolve_device(device, device_here))


def run_audit(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    methods: Any = DEFAULT_AUDIT_METHODS,
    *,
    engine: str = "local",
    dtype: str = "float16",
    chunk_size: int = 32,
    batch_size: int = 32,
    target: str | int = "predicted",
    seed: int = 0,
    layer: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
    address: str | None = None,
    ray_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    on_chunk: Callable[[int, str, int], None] | None = None,
) -> AuditResult:
    """Explain every image of ``data`` with ``methods`` into the store ``OUT/maps.zarr``.

    Resumable: run the same call again after an interruption (even ``kill -9``) and it computes only the
    chunks not yet marked done; the finished store is bit for bit the store of an uninterrupted run. A
    call with other settings (methods, options, model weights, data, dtype, chunk or batch size, target,
    seed, device type) on an existing store raises an :class:`InputError` that says what differs, unless
    ``overwrite`` is set.

    Args:
        model: a run directory written by ``saliencekit train``.
        data: a folder with one sub-folder of images per class (classes of the model).
        out: the audit folder (created); the store is ``OUT/maps.zarr``.
        methods: method names, a comma string, or ``{label: {"method": name, **options}}``.
        engine: ``"local"`` (this process, a DataLoader reading ahead) or ``"ray"`` (one model-holding
            actor per GPU or CPU group of a Ray cluster; ``pip install saliencekit[ray]``).
        dtype: ``"float16"`` (default) or ``"float32"`` maps.
        chunk_size: images per store chunk (the unit of work and of resumption).
        batch_size: images (or noisy copies, steps) per forward/backward pass of the many-pass methods.
        target: ``"predicted"``, ``"label"`` or a class index.
        seed: base seed of the methods that take one (combined with the chunk number).
        layer: layer of the CAM methods (default: automatic).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (for the Ray engine: ``"cuda"`` puts each actor on its GPU).
        workers: local engine: loader processes reading images ahead (default 2, 0 on single-core machines).
        overwrite: delete an existing store (and the audit's page) and start again.
        progress: show a progress bar (images/s and time left).
        num_threads: CPU threads for torch (local engine; None: torch's default).
        address: Ray engine: the cluster to join (``"auto"`` or ``"ray://host:10001"``); default: the Ray
            instance this process already joined, else a new local one.
        ray_workers: Ray engine: number of actors (default: one per GPU with ``device="cuda"``, else one per
            ``cpus_per_worker`` CPUs of the cluster).
        cpus_per_worker: Ray engine: CPUs each actor reserves (and its torch threads).
        gpus_per_worker: Ray engine: GPUs each actor reserves (default 1 with a CUDA device, else 0).
        on_chunk: called after each chunk is written with (chunk, worker, worker process id).

    Returns:
        An :class:`AuditResult` (``result.summary()`` is the one-line summary).
    """
    from tqdm.auto import tqdm

    from saliencekit._threads import torch_threads

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    job = make_job(model, data, methods, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size, target=target,
                   seed=seed, layer=layer, device=device, device_here=engine == "local")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    path = store_path(out)
    # The driver of the Ray engine only needs the model's identity: it loads it on the CPU.
    ctx = load_context(job, load_device="cpu" if engine == "ray" else None)
    with writer_lock(path):
        if path.exists() and overwrite:
            for name in OUTPUTS:
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        remove_leftovers(path)
        if path.exists():
            store = AuditStore(path)
            diff = differences(store.identity, ctx.identity)
            if diff:
                raise InputError(f"the audit store {path} was made with other settings: {'; '.join(diff)}. Use the "
                                 "same settings to resume it, another --out folder, or --overwrite to start again")
        else:
            create_store(path, ctx)
            store = AuditStore(path)
        done = store.done
        pending = [c for c in range(ctx.n_chunks) if not done[c]]
        result = AuditResult(out=out, store=path, n_images=ctx.n_images, n_chunks=ctx.n_chunks,
                             already_done=int(done.sum()))
        start_images = sum(ctx.bounds(c)[1] - ctx.bounds(c)[0] for c in range(ctx.n_chunks) if done[c])
        bar = tqdm(total=ctx.n_images, initial=start_images, desc="audit", unit="img", disable=not progress,
                   smoothing=0.1, dynamic_ncols=True)

        def tick(c: int, worker: str, pid: int) -> None:
            a, b = ctx.bounds(c)
            bar.update(b - a)
            result.images_computed += b - a
            if on_chunk is not None:
                on_chunk(c, worker, pid)

        t0 = time.perf_counter()
        try:
            if engine == "local":
                import os

                from saliencekit.audit._local import run_local

                n_workers = workers if workers is not None else (2 if (os.cpu_count() or 1) > 1 else 0)
                with torch_threads(num_threads):
                    result.computed = run_local(ctx, str(path), pending, workers=n_workers,
                                                on_chunk=lambda c, n: tick(c, "local", os.getpid()))
            else:
                from saliencekit.audit._ray import run_ray

                result.computed, result.retried = run_ray(
                    ctx, str(path), pending, address=address, n_workers=ray_workers,
                    cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, on_chunk=tick)
        finally:
            bar.close()
        result.seconds = time.perf_counter() - t0
        remove_leftovers(path)
    return result


def analyze(
    out: str | Path,
    methods: Any = None,
    *,
    data: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str = "",
) -> tuple[dict[str, Any], Path]:
    """SpRAy over a complete store, then ``OUT/spray.json`` and the page ``OUT/audit.html``.

    Args:
        out: the audit folder (or its store).
        methods: method labels to analyse (default: every method of the store).
        data: the data folder, for masks and example images (default: the one the store was made from).
        seed: seed of the clustering's k-means.
        progress: show progress bars.
        command: the command shown on the page.

    Returns:
        The analysis (label -> :class:`~saliencekit.audit.spray.MethodAnalysis`) and the page's path.
    """
    from saliencekit import _atomic
    from saliencekit.audit.page import PAGE_NAME, build_page
    from saliencekit.audit.spray import spray, to_json

    store = AuditStore(out)
    folder = store.path.parent
    names = [methods] if isinstance(methods, str) else methods
    analysis = spray(store, names, seed=seed, data=data, progress=progress)
    _atomic.write_json(folder / "spray.json", {**to_json(analysis), "store": str(store.path)})
    page = build_page(store, analysis, folder / PAGE_NAME, data=data, command=command)
    return analysis, page

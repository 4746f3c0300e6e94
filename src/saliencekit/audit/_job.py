"""What an audit computes, and how one chunk of it is computed: the same code in every engine.

An :class:`AuditJob` is plain data (it travels to Ray actors as a dict). :func:`load_context` turns it
into a model, a preprocessing, the data folder's index and the job's *identity* (what the store's bits
depend on). :func:`compute_chunk` explains the images of one chunk.

Determinism (the store of an interrupted and resumed job, or of a job spread over processes, is bit
for bit the store of an uninterrupted single-process job):

- chunk ``c`` always holds images ``c * chunk_size`` to ``(c + 1) * chunk_size - 1`` (in the index's
  order: class folders in the model's class order, then file names), explained in one call;
- many-pass methods run at a fixed ``batch_size`` (never ``"auto"``, whose timing-based choice
  would depend on the machine's load);
- a method that takes a ``seed`` gets, in chunk ``c``, the seed ``SeedSequence([seed, c])``
  (``seed``: the method's own option or the job's ``seed``), so its noise depends on the chunk and
  not on which process computed it or what ran before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saliencekit.errors import InputError

DTYPES = ("float16", "float32")
TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class AuditJob:
    """The settings of an audit (plain data).

    Args:
        model_source: a run directory written by ``saliencekit train``.
        data_root: a folder with one sub-folder of images per class (the classes must be classes of the model).
        methods: ``label -> {"method": name, "options": {...}}`` (see :func:`saliencekit.audit.normalize_methods`).
        dtype: ``"float16"`` (default; stored with a per-image power-of-two scale, see the store docs) or
            ``"float32"``.
        chunk_size: images per chunk of the store, the unit of work and of resumption.
        batch_size: images (or noisy copies, steps...) per forward/backward pass of the many-pass methods.
        target: ``"predicted"`` (the model's predicted class), ``"label"`` (the folder's class) or a class index.
        seed: base seed of the methods that take one (combined with the chunk index).
        layer: layer of the CAM methods (default: each method's automatic choice).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    """

    model_source: str
    data_root: str
    methods: dict[str, dict[str, Any]]
    dtype: str = "float16"
    chunk_size: int = 32
    batch_size: int = 32
    target: str | int = "predicted"
    seed: int = 0
    layer: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"unknown store dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        for name in ("chunk_size", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.target, bool) or not isinstance(self.target, str | int):
            raise InputError(f"target must be 'predicted', 'label', a class name or index, got {self.target!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for Ray actors and the store's attributes)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditJob:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(d))


def normalize_methods(methods: Any) -> dict[str, dict[str, Any]]:
    """``label -> {"method": name, "options": {...}}`` from names, a comma string or ``{label: {...}}``.

    Raises:
        InputError: no methods, or a name listed twice.
        UnknownNameError: an unregistered method (the message lists the registered ones).
    """
    from saliencekit.methods.registry import method_options
    from saliencekit.methods.specs import parse_methods

    specs = parse_methods(methods)
    for label, spec in specs.items():
        valid = method_options(spec["method"])
        unknown = sorted(set(spec["options"]) - set(valid))
        if unknown:
            raise InputError(f"method {label!r} ({spec['method']}) has no option(s) {unknown}; valid options: "
                             f"{', '.join(valid) or '(none)'}")
        if "batch_size" in spec["options"] and not isinstance(spec["options"]["batch_size"], int):
            raise InputError(f"method {label!r}: batch_size must be an integer in an audit (a store's bits must not "
                             "depend on timing), got {spec['options']['batch_size']!r}")
        if "/" in label or label.startswith((".", "__")) or not label:
            raise InputError(f"method label {label!r} cannot name an array of the store (no '/', no leading '.' "
                             "or '__')")
    return specs


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of the methods in chunk ``chunk``: ``SeedSequence([seed, chunk])`` as a 63-bit integer.

    >>> chunk_seed(0, 3) == chunk_seed(0, 3) != chunk_seed(0, 4)
    True
    """
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), int(chunk)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes of every tensor), as hex."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class AuditContext:
    """A job made concrete: the model, the data index and the identity of the store it writes.

    Attributes:
        job: the settings.
        model: the model (eval mode) on ``job.device``.
        preprocessing: how files become model inputs.
        class_names: the model's classes, in label order.
        files: the images, relative to ``job.data_root``, in store order.
        paths: the images' absolute paths.
        labels: each image's class index in ``class_names`` (int64).
        masks: per image, mask kind -> path (for the analysis; never used to compute maps).
        identity: everything the store's bits depend on (compared when a job is resumed).
        info: provenance that does not change the bits (paths, versions, full method parameters).
    """

    job: AuditJob
    model: nn.Module
    preprocessing: Any
    class_names: list[str]
    files: list[str]
    paths: list[Path]
    labels: np.ndarray
    masks: list[dict[str, str]]
    identity: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.files)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_images // self.job.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """First and one-past-last image of ``chunk``."""
        start = chunk * self.job.chunk_size
        return start, min(start + self.job.chunk_size, self.n_images)


def _load_model(source: str, device: str) -> tuple[nn.Module, Any, list[str], dict[str, Any]]:
    """The model, its preprocessing, its class names and a description of where it came from."""
    from saliencekit.errors import RunDirError
    from saliencekit.run import is_run_dir, load_run

    path = Path(source)
    if not is_run_dir(path):
        raise RunDirError(f"{source} is not a run directory (a folder written by `saliencekit train` with "
                          "checkpoint.pt, config.json and split.json)")
    run = load_run(path, device=device)
    return run.model, run.preprocessing, list(run.class_names), {"kind": "run_dir", "arch": run.info.arch,
                                                                 "arch_kwargs": run.info.arch_kwargs}


def _index(data_root: str, class_names: list[str]) -> tuple[list[str], list[Path], np.ndarray, list[dict[str, str]]]:
    from saliencekit.data.folder import scan_folder

    index = scan_folder(data_root, min_classes=1)
    unknown = [c for c in index.classes if c not in class_names]
    if unknown:
        raise InputError(f"class folder(s) {unknown} of {data_root} are not classes of the model "
                         f"({', '.join(class_names)}); give a folder whose sub-folders are among the model's classes")
    order = {c: i for i, c in enumerate(class_names)}
    samples = sorted(index.samples, key=lambda s: (order[s.class_name], s.relpath))
    files = [s.relpath for s in samples]
    paths = [s.path for s in samples]
    labels = np.array([order[s.class_name] for s in samples], dtype=np.int64)
    masks = [{k: str(v) for k, v in s.masks.items()} for s in samples]
    return files, paths, labels, masks


def data_fingerprint(files: list[str], paths: list[Path], labels: np.ndarray) -> str:
    """SHA-256 over every image's relative path, class and size in bytes (contents are not read)."""
    h = hashlib.sha256()
    for f, p, y in zip(files, paths, labels.tolist()):
        h.update(f"{f}|{y}|{p.stat().st_size}\n".encode())
    return h.hexdigest()


def load_context(job: AuditJob, load_device: str | None = None) -> AuditContext:
    """Load the model and index the data of ``job``; compute its identity.

    Args:
        job: the settings.
        load_device: where to load the model when not ``job.device`` (a Ray driver that only needs the
            identity loads it on the CPU; the identity still names ``job.device``'s type).

    Raises:
        RunDirError: the model source is not a run directory.
        DataError: the data folder is missing, empty or has no class folders.
        InputError: a class folder is not a class of the model, a bad target, or an unknown method option.
    """
    from saliencekit import __version__
    from saliencekit.methods import build_methods

    model, preprocessing, class_names, model_info = _load_model(job.model_source, load_device or job.device)
    files, paths, labels, masks = _index(job.data_root, class_names)
    if isinstance(job.target, str) and job.target not in TARGETS:
        if job.target not in class_names:
            raise InputError(f"unknown target {job.target!r}; valid: predicted, label, a class name "
                             f"({', '.join(class_names)}) or index")
        job = replace(job, target=class_names.index(job.target))
    if isinstance(job.target, int) and not 0 <= job.target < len(class_names):
        raise InputError(f"target class {job.target} out of range; the model has classes 0..{len(class_names) - 1} "
                         f"({', '.join(class_names)})")
    built = build_methods(model, engine_specs(job, chunk=0), layer=job.layer, batch_size=job.batch_size)
    params = {label: m.params for label, m in built.items()}
    for p in params.values():
        p.pop("seed", None)  # varies by chunk; the rule is in the identity
    identity = {
        "model": {"fingerprint": model_fingerprint(model), "class_names": class_names,
                  "preprocessing": preprocessing.to_dict()},
        "data": {"fingerprint": data_fingerprint(files, paths, labels), "n_images": len(files)},
        "methods": job.methods,
        "dtype": job.dtype, "chunk_size": job.chunk_size, "batch_size": job.batch_size,
        "target": job.target, "seed": job.seed, "layer": job.layer,
        "device_type": torch.device(job.device).type, "torch": str(torch.__version__),
    }
    info = {
        "model_source": str(job.model_source), "data_root": str(job.data_root), "model": model_info,
        "method_params": params, "saliencekit": __version__,
        "seed_rule": "a method taking a seed gets SeedSequence([seed, chunk]) in each chunk "
                     "(seed: the method's own option, else the job's seed)",
    }
    return AuditContext(job=job, model=model, preprocessing=preprocessing, class_names=class_names, files=files,
                        paths=paths, labels=labels, masks=masks, identity=json.loads(json.dumps(identity)),
                        info=json.loads(json.dumps(info)))


def engine_specs(job: AuditJob, chunk: int) -> dict[str, dict[str, Any]]:
    """The ``{label: {"method": name, **options}}`` of chunk ``chunk`` (seeds derived from the chunk index)."""
    from saliencekit.methods.registry import method_options

    out: dict[str, dict[str, Any]] = {}
    for label, spec in job.methods.items():
        opts = dict(spec.get("options", {}))
        if "seed" in method_options(spec["method"]):
            base = opts.get("seed")
            opts["seed"] = chunk_seed(job.seed if base is None else int(base), chunk)
        out[label] = {"method": spec["method"], **opts}
    return out


def load_images(ctx: AuditContext, chunk: int) -> torch.Tensor:
    """The preprocessed images of ``chunk`` (n, C, H, W), float32 on the CPU."""
    start, stop = ctx.bounds(chunk)
    return torch.stack([ctx.preprocessing.load(p) for p in ctx.paths[start:stop]])


@dataclass
class ChunkResult:
    """What one chunk writes to the store (numpy arrays over the chunk's images)."""

    chunk: int
    maps: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]
    predictions: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray


def encode_maps(maps: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps as stored, and the per-image factor that gives them back: ``maps = stored * scale``.

    float32 is stored as is (scale 1). float16 is stored as ``maps * 2**k`` with one power of two per image
    chosen so that its largest absolute value lies in [2**14, 2**15): the scaling is exact, no map
    overflows float16 or loses its small values to underflow, and each value keeps float16's 11 bits of
    relative precision (about 3 decimal digits).

    >>> m = np.array([[[1e-7, -3e-8]]], dtype=np.float32)
    >>> stored, scale = encode_maps(m, "float16")
    >>> np.allclose(stored.astype(np.float32) * scale[:, None, None], m, rtol=1e-3)
    True
    """
    maps = np.asarray(maps, dtype=np.float32)
    n = maps.shape[0]
    if dtype == "float32":
        return maps, np.ones(n, dtype=np.float32)
    flat = np.abs(maps.reshape(n, -1)).astype(np.float64)
    flat[~np.isfinite(flat)] = 0.0
    amax = flat.max(axis=1) if flat.shape[1] else np.zeros(n)
    k = np.zeros(n, dtype=np.int64)
    pos = amax > 0
    k[pos] = 14 - np.floor(np.log2(amax[pos])).astype(np.int64)
    k = np.clip(k, -110, 120)
    stored = np.ldexp(maps.astype(np.float64), k[:, None, None]).astype(np.float16)
    return stored, np.ldexp(np.float32(1.0), -k).astype(np.float32)


def compute_chunk(ctx: AuditContext, chunk: int, images: torch.Tensor) -> ChunkResult:
    """Predict and explain the images of ``chunk`` (the same computation whichever process runs it)."""
    from saliencekit import _layout
    from saliencekit.methods import explain
    from saliencekit.methods._capture import eval_mode
    from saliencekit.methods.targets import predicted_classes
    from saliencekit.predict import logits_to_proba

    job = ctx.job
    start, stop = ctx.bounds(chunk)
    if images.shape[0] != stop - start:
        raise InputError(f"chunk {chunk} has {stop - start} images, got {images.shape[0]}")
    x = images.to(job.device)
    with eval_mode(ctx.model), torch.inference_mode():
        logits = _layout.forward(ctx.model, x)
    logits = logits[:, None] if logits.ndim == 1 else logits
    probabilities = logits_to_proba(logits.float().cpu()).numpy().astype(np.float32)
    predictions = predicted_classes(logits).cpu().numpy().astype(np.int64)
    labels = ctx.labels[start:stop]
    if job.target == "predicted":
        targets = predictions
    elif job.target == "label":
        targets = labels
    else:
        targets = np.full(stop - start, int(job.target), dtype=np.int64)
    t = torch.as_tensor(targets, dtype=torch.long, device=x.device)
    out = explain(ctx.model, x, engine_specs(job, chunk), target=t, layer=job.layer, batch_size=job.batch_size)
    maps, scales = {}, {}
    for label in job.methods:
        maps[label], scales[label] = encode_maps(out[label].maps.detach().float().cpu().numpy(), job.dtype)
    return ChunkResult(chunk=chunk, maps=maps, scales=scales, predictions=predictions,
                       probabilities=probabilities, targets=targets.astype(np.int64))

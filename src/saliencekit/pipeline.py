"""The demo pipeline: synthetic data -> trained CNN -> evaluation (-> later: explanations, checks, report).

The demo is a list of :class:`Step` objects run in order on one shared :class:`DemoContext`.
Later stages add their own step to :data:`DEMO_STEPS` (or pass ``steps=`` to :func:`run_demo`)::

    def explain_step(ctx: DemoContext) -> None:
        ctx.outputs["explanations"] = ...

    DEMO_STEPS.append(Step("explain", "saliency maps of test images", explain_step))
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saliencekit import _atomic
from saliencekit.errors import DataError, SaliencekitError


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (the default is the full lesson; :meth:`quick` is a seconds-long smoke run)."""

    per_class: int = 350
    size: int = 512
    seed: int = 0
    image_size: int = 256
    epochs: int = 10
    batch_size: int = 32

    @classmethod
    def quick(cls) -> DemoSettings:
        """Tiny settings: 40 images per class at 128 px, 64 px model input, 2 epochs."""
        return cls(per_class=40, size=128, image_size=64, epochs=2, batch_size=16)


@dataclass
class DemoContext:
    """What the demo steps share.

    Attributes:
        out: the demo folder.
        settings: data and training sizes.
        shortcut: fraction of effusion images carrying the planted shortcut marker.
        progress: show progress bars.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        data_dir: the synthetic data folder (``OUT/data``).
        run_dir: the run directory (``OUT/run``).
        run: the trained run (set by the train step).
        metrics: the test metrics (set by the evaluate step).
        outputs: label -> path of everything worth showing to the user, in order.
        timings: step name -> seconds.
    """

    out: Path
    settings: DemoSettings
    shortcut: float = 0.0
    progress: bool = True
    device: str = "auto"
    run: Any = None
    metrics: dict[str, Any] | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"


@dataclass
class Step:
    """One stage of the demo: ``func(ctx)`` does the work and records what it wrote in ``ctx.outputs``."""

    name: str
    description: str
    func: Callable[[DemoContext], None]


_DATA_MARKER = ".saliencekit_demo_data.json"


def generate_step(ctx: DemoContext) -> None:
    """Generate the synthetic chest X-rays into ``OUT/data`` (reused when already there with the same settings)."""
    s = ctx.settings
    want = {"per_class": s.per_class, "size": s.size, "seed": s.seed, "shortcut": ctx.shortcut}
    marker = ctx.out / _DATA_MARKER  # beside the data folder: the generator wants an empty folder
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want and ctx.data_dir.is_dir():
                ctx.outputs["synthetic data (reused)"] = ctx.data_dir
                return
        except (OSError, json.JSONDecodeError):
            pass
        marker.unlink()
        if ctx.data_dir.exists():
            shutil.rmtree(ctx.data_dir)  # written by an earlier demo with other settings
    if ctx.data_dir.exists() and any(ctx.data_dir.iterdir()):
        raise DataError(f"{ctx.data_dir} exists and was not written by the demo; choose another --out folder")
    try:
        from saliencekit.data.synthetic import generate
    except ImportError as exc:
        raise SaliencekitError("the synthetic generator (saliencekit.data.synthetic) is not available") from exc
    generate(ctx.data_dir, per_class=s.per_class, size=s.size, seed=s.seed, shortcut=ctx.shortcut,
             progress=ctx.progress)
    _atomic.write_json(marker, want)
    ctx.outputs["synthetic data"] = ctx.data_dir


def train_step(ctx: DemoContext) -> None:
    """Train the effusion CNN on the synthetic data (writes ``OUT/run``; evaluates on the test split)."""
    from saliencekit.train.fit import TrainConfig, train

    s = ctx.settings
    config = TrainConfig(epochs=s.epochs, image_size=s.image_size, batch_size=s.batch_size, device=ctx.device)
    ctx.run = train(ctx.data_dir, ctx.run_dir, config, progress=ctx.progress, command="saliencekit demo")
    ctx.metrics = ctx.run.metrics
    from saliencekit import run as rd

    ctx.outputs["run directory"] = ctx.run_dir
    ctx.outputs["checkpoint"] = ctx.run_dir / rd.CHECKPOINT
    ctx.outputs["training curves"] = ctx.run_dir / rd.CURVES


def evaluate_step(ctx: DemoContext) -> None:
    """Test-split metrics (already computed by training; re-read here so the step also works alone)."""
    from saliencekit import run as rd
    from saliencekit.train.evaluate import evaluate

    if ctx.metrics is None:
        ctx.metrics = evaluate(ctx.run if ctx.run is not None else ctx.run_dir, progress=ctx.progress)
    ctx.outputs["test metrics"] = ctx.run_dir / rd.METRICS
    ctx.outputs["confusion matrix"] = ctx.run_dir / rd.CONFUSION
    ctx.outputs["ROC curve"] = ctx.run_dir / rd.ROC


DEMO_STEPS: list[Step] = [
    Step("generate", "synthetic chest X-rays (effusion vs normal) with masks", generate_step),
    Step("train", "the lesson's effusion CNN, best epoch by validation loss", train_step),
    Step("evaluate", "accuracy, ROC AUC, sensitivity, specificity, confusion matrix", evaluate_step),
]


def run_demo(
    out: str | Path = "saliencekit_demo",
    quick: bool = False,
    shortcut: float = 0.0,
    progress: bool = True,
    device: str = "auto",
    steps: Sequence[Step] | None = None,
    log: Callable[[str], None] | None = print,
) -> DemoContext:
    """Run every demo step on the built-in synthetic default.

    Args:
        out: folder for everything the demo writes (``data/``, ``run/``, ...).
        quick: tiny settings (seconds instead of minutes), for smoke tests.
        shortcut: fraction of effusion images with a planted shortcut marker (0: none).
        progress: show progress bars.
        device: where to train.
        steps: the steps to run (default: :data:`DEMO_STEPS`).
        log: called with one line per step (None: silent).

    Returns:
        The context, with the run, the metrics, the outputs and the step timings
        (also written to ``OUT/demo.json``).

    >>> ctx = run_demo("saliencekit_demo", quick=True)  # doctest: +SKIP
    >>> ctx.metrics["accuracy"]  # doctest: +SKIP
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, settings=DemoSettings.quick() if quick else DemoSettings(), shortcut=shortcut,
                      progress=progress, device=device)
    steps = list(DEMO_STEPS if steps is None else steps)
    for i, step in enumerate(steps, start=1):
        if log:
            log(f"[{i}/{len(steps)}] {step.name}: {step.description}")
        t0 = time.perf_counter()
        step.func(ctx)
        ctx.timings[step.name] = round(time.perf_counter() - t0, 3)
    summary = {
        "quick": quick, "shortcut": shortcut, "settings": asdict(ctx.settings), "timings_s": ctx.timings,
        "total_s": round(sum(ctx.timings.values()), 3), "outputs": {k: str(v) for k, v in ctx.outputs.items()},
        "metrics": {k: (ctx.metrics or {}).get(k) for k in ("n", "accuracy", "roc_auc", "sensitivity", "specificity")},
    }
    _atomic.write_json(out / "demo.json", summary)
    return ctx

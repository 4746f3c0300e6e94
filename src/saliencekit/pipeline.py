"""The demo pipeline: synthetic data -> trained CNN -> evaluation -> saliency maps -> trust checks -> report.

The demo is a list of :class:`Step` objects run in order on one shared :class:`DemoContext`;
``run_demo(steps=...)`` runs another list (e.g. only the first three).
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
from saliencekit.errors import DataError


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (the default is the full lesson; :meth:`quick` is a seconds-long smoke run).

    The trust checks are cut to fit the demo's budget (the whole demo in under 10 minutes on 2 CPU cores, the
    check step about 3 minutes of it). Every check still runs and is shown; what is cut, and why:

    - ``check_images`` 8 (instead of 32): agreement (36 method pairs, every similarity measure) and localisation
      use all of them. ``costly_images`` 4: the checks that recompute every method's maps many times (model
      randomisation: once per layer; data randomisation; input invariance: three times in float64;
      max-sensitivity: once per noise draw) and faithfulness (ROAD solves an imputation per image and
      fraction, the slowest part on a CPU) use only the first 4 (balanced over the classes). Four images give
      a coarse but honest verdict: the randomisation curves of a method that fails stay near 1 on every image.
    - ``independent_randomization`` off: only the cascading model randomisation runs (the verdict is taken
      from it); the independent one would recompute all maps once more per layer.
    - ``smoothgrad_samples`` / ``ig_steps`` 8 (instead of the usual 16-50): each costs a forward and backward
      pass per sample / step, in every recomputation above; ``scorecam_top_n`` keeps the 16 channels of largest
      activation variance (Faster Score-CAM) instead of all 50 of the last convolution.
    - ``sensitivity_samples`` 3 noise draws for max-sensitivity; ``random_label_images`` / ``random_label_epochs``:
      the random-label model is fitted on 64 training images for at most 20 epochs (it stops earlier once it
      has memorised 95% of its permuted labels); ``deletion_steps`` 10 and 3 ROAD fractions for faithfulness.
    """

    per_class: int = 350
    size: int = 512
    seed: int = 0
    image_size: int = 256
    # 15 rather than `train`'s 10 epochs: with Adam at 1e-3 and batches of 32, the lesson CNN sits at the
    # 0.693 loss plateau for the first 100-150 optimiser steps and then learns within a few epochs; 10
    # epochs (160 steps) leave some seeds just past the take-off, calling normals effusions (seed 42: 0.89
    # test accuracy, seed 1: 0.88); at 15 seed 42 reaches 0.92 and seed 2 0.96, the errors being the
    # smallest, faintest effusions. See bench/README.md.
    epochs: int = 15
    batch_size: int = 32
    check_images: int = 8
    explain_images: int = 4
    report_images: int = 8
    random_label_epochs: int = 20
    random_label_images: int = 64
    smoothgrad_samples: int = 8
    ig_steps: int = 8
    scorecam_top_n: int | None = 16
    costly_images: int = 4
    independent_randomization: bool = False
    sensitivity_samples: int = 3
    deletion_steps: int = 10
    road_fractions: tuple[float, ...] = (0.2, 0.5, 0.8)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Tiny settings: 40 images per class at 128 px, 64 px model input, 2 epochs, 4 checked images."""
        return cls(per_class=40, size=128, image_size=64, epochs=2, batch_size=16, check_images=4,
                   explain_images=2, report_images=4, random_label_epochs=5, random_label_images=32,
                   smoothgrad_samples=4, ig_steps=4, scorecam_top_n=8, costly_images=4, sensitivity_samples=2,
                   deletion_steps=5, road_fractions=(0.2, 0.5, 0.8))

    def check_settings(self) -> Any:
        """The :class:`~saliencekit.trust.CheckSettings` of the demo's check step (see the class docstring)."""
        from saliencekit.trust import CheckSettings

        modes = ("cascading", "independent") if self.independent_randomization else ("cascading",)
        return CheckSettings(methods=self.methods(), n_images=self.check_images, seed=self.seed,
                             random_label_epochs=self.random_label_epochs,
                             random_label_images=self.random_label_images, randomization_modes=modes,
                             costly_images=self.costly_images, sensitivity_samples=self.sensitivity_samples,
                             deletion_steps=self.deletion_steps, road_fractions=tuple(self.road_fractions),
                             costly_checks=("model_randomization", "data_randomization", "input_invariance",
                                            "complexity", "faithfulness"))

    def methods(self) -> dict[str, dict[str, Any]]:
        """The saliency methods the demo explains with and checks (labels -> options).

        Integrated gradients appears twice, from a black and from a zero baseline: the input-shift
        check shows that only the first is invariant to a constant brightness shift.
        """
        return {
            "gradient": {"method": "gradient"},
            "gradient_x_input": {"method": "gradient_x_input"},
            "smoothgrad": {"method": "smoothgrad", "samples": self.smoothgrad_samples},
            "ig_black": {"method": "integrated_gradients", "baseline": "black", "steps": self.ig_steps},
            "ig_zero": {"method": "integrated_gradients", "baseline": "zero", "steps": self.ig_steps},
            "guided_backprop": {"method": "guided_backprop"},
            "gradcam": {"method": "gradcam"},
            "gradcam++": {"method": "gradcam++"},
            "scorecam": {"method": "scorecam"} if self.scorecam_top_n is None
            else {"method": "scorecam", "top_n": self.scorecam_top_n},
        }


@dataclass
class DemoContext:
    """What the demo steps share.

    Attributes:
        out: the demo folder.
        settings: data and training sizes.
        shortcut: fraction of effusion images carrying the planted shortcut marker.
        progress: show progress bars.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        num_threads: CPU threads for torch (None: torch's default).
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
    num_threads: int | None = None
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
    from saliencekit.data.synthetic import generate

    generate(ctx.data_dir, per_class=s.per_class, size=s.size, seed=s.seed, shortcut=ctx.shortcut,
             progress=ctx.progress)
    _atomic.write_json(marker, want)
    ctx.outputs["synthetic data"] = ctx.data_dir


def train_step(ctx: DemoContext) -> None:
    """Train the effusion CNN on the synthetic data (writes ``OUT/run``; evaluates on the test split)."""
    from saliencekit.train.fit import TrainConfig, train

    s = ctx.settings
    config = TrainConfig(epochs=s.epochs, image_size=s.image_size, batch_size=s.batch_size, device=ctx.device,
                         num_threads=ctx.num_threads)
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


def explain_step(ctx: DemoContext) -> None:
    """Overlays, comparison figures and raw maps of a few test images (``OUT/explanations``)."""
    from saliencekit.run import load_run
    from saliencekit.viz.explain_files import explain_files

    run = ctx.run if ctx.run is not None else load_run(ctx.run_dir)
    test = run.dataset("test")
    # the first images of each class of the test split
    per_class = max(1, ctx.settings.explain_images // len(run.class_names))
    chosen: list[Path] = []
    for label in range(len(run.class_names)):
        chosen += [test.sample(i).path for i in range(len(test)) if test.sample(i).label == label][:per_class]
    explain_files(run.model, run.preprocessing, chosen, ctx.settings.methods(), ctx.out / "explanations",
                  class_names=run.class_names, device=str(next(run.model.parameters()).device), progress=ctx.progress)
    ctx.outputs["explanations"] = ctx.out / "explanations"


def check_step(ctx: DemoContext) -> None:
    """The trust checks on test images (``OUT/run/checks/checks.json`` and figures)."""
    from saliencekit.run import load_run
    from saliencekit.trust import run_checks

    s = ctx.settings
    run = ctx.run if ctx.run is not None else load_run(ctx.run_dir)
    out = ctx.run_dir / "checks"
    run_checks(run, s.check_settings(), device=ctx.device, out_dir=out, progress=ctx.progress,
               command="saliencekit demo")
    ctx.outputs["trust checks"] = out / "checks.json"


def audit_step(ctx: DemoContext) -> None:
    """Every image of the data explained into a store, SpRAy over the maps, the audit page (``OUT/audit``).

    Skipped with a warning when the ``audit`` extra (zarr v3, scikit-learn, Jinja2) is not installed.
    """
    import importlib.util
    import warnings

    missing = [m for m in ("zarr", "sklearn", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        warnings.warn(f"the audit step needs {', '.join(missing)}: pip install saliencekit[audit]; skipped",
                      stacklevel=2)
        return
    from saliencekit.audit import run_audit
    from saliencekit.audit.runner import analyze

    s = ctx.settings
    methods = {"gradcam": {"method": "gradcam"},
               "smoothgrad": {"method": "smoothgrad", "samples": s.smoothgrad_samples}}
    # overwrite: the demo trains a new model each time, so an earlier store of this folder is not resumable
    run_audit(ctx.run_dir, ctx.data_dir, ctx.out / "audit", methods, device=ctx.device, progress=ctx.progress,
              overwrite=True, num_threads=ctx.num_threads, seed=s.seed)
    _, page = analyze(ctx.out / "audit", progress=ctx.progress, seed=s.seed, command="saliencekit demo --shortcut")
    ctx.outputs["audit store"] = ctx.out / "audit" / "maps.zarr"
    ctx.outputs["audit page"] = page


def report_step(ctx: DemoContext) -> None:
    """The self-contained HTML trust report (``OUT/report.html``)."""
    from saliencekit.viz.report import build_report

    path = build_report(ctx.run_dir, ctx.out / "report.html", checks=ctx.run_dir / "checks",
                        images=ctx.settings.report_images, progress=ctx.progress, seed=ctx.settings.seed,
                        command="saliencekit demo")
    ctx.outputs["report"] = path


DEMO_STEPS: list[Step] = [
    Step("generate", "synthetic chest X-rays (effusion vs normal) with masks", generate_step),
    Step("train", "the lesson's effusion CNN, best epoch by validation loss", train_step),
    Step("evaluate", "accuracy, ROC AUC, sensitivity, specificity, confusion matrix", evaluate_step),
    Step("explain", "saliency maps of a few test images, every method in one figure", explain_step),
    Step("check", "trust checks: randomisation, invariance, agreement, faithfulness, localisation", check_step),
    Step("report", "one self-contained HTML page", report_step),
]


#: Added before the report when the demo plants a shortcut (``saliencekit demo --shortcut``).
AUDIT_STEP = Step("audit", "every image explained into a store; spectral relevance analysis finds clusters", audit_step)


def demo_steps(shortcut: float = 0.0, steps: Sequence[Step] | None = None) -> list[Step]:
    """The steps a demo runs: ``steps`` (default :data:`DEMO_STEPS`), with :data:`AUDIT_STEP` before the report
    when a shortcut is planted."""
    steps = list(DEMO_STEPS if steps is None else steps)
    if shortcut > 0 and AUDIT_STEP not in steps and any(step.func is report_step for step in steps):
        steps.insert(next(i for i, step in enumerate(steps) if step.func is report_step), AUDIT_STEP)
    return steps


def run_demo(
    out: str | Path = "saliencekit_demo",
    quick: bool = False,
    shortcut: float = 0.0,
    progress: bool = True,
    device: str = "auto",
    steps: Sequence[Step] | None = None,
    log: Callable[[str], None] | None = print,
    num_threads: int | None = None,
) -> DemoContext:
    """Run every demo step on the built-in synthetic default.

    Args:
        out: folder for everything the demo writes (``data/``, ``run/``, ...).
        quick: tiny settings (seconds instead of minutes), for smoke tests.
        shortcut: fraction of effusion images with a planted shortcut marker (0: none); the demo then also audits
            the whole dataset (:data:`AUDIT_STEP`, before the report).
        progress: show progress bars.
        device: where to train.
        steps: the steps to run (default: :data:`DEMO_STEPS`).
        log: called with one line per step (None: silent).
        num_threads: CPU threads for torch in every step (None: torch's default); the previous count is
            restored afterwards. Fewer threads than cores can be much faster on a busy machine.

    Returns:
        The context, with the run, the metrics, the outputs and the step timings
        (also written to ``OUT/demo.json``).

    >>> ctx = run_demo("saliencekit_demo", quick=True)  # doctest: +SKIP
    >>> ctx.metrics["accuracy"]  # doctest: +SKIP
    """
    import torch

    from saliencekit._threads import check_threads, torch_threads

    check_threads(num_threads)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, settings=DemoSettings.quick() if quick else DemoSettings(), shortcut=shortcut,
                      progress=progress, device=device, num_threads=num_threads)
    steps = demo_steps(shortcut, steps)
    with torch_threads(num_threads):
        threads_used = torch.get_num_threads()
        for i, step in enumerate(steps, start=1):
            if log:
                log(f"[{i}/{len(steps)}] {step.name}: {step.description}")
            t0 = time.perf_counter()
            with _atomic.all_or_nothing():  # an interrupted step leaves nothing; the finished ones stay
                step.func(ctx)
            ctx.timings[step.name] = round(time.perf_counter() - t0, 3)
    summary = {
        "quick": quick, "shortcut": shortcut, "num_threads": threads_used, "settings": asdict(ctx.settings),
        "timings_s": ctx.timings,
        "total_s": round(sum(ctx.timings.values()), 3), "outputs": {k: str(v) for k, v in ctx.outputs.items()},
        "metrics": {k: (ctx.metrics or {}).get(k) for k in ("n", "accuracy", "roc_auc", "sensitivity", "specificity")},
    }
    _atomic.write_json(out / "demo.json", summary)
    return ctx

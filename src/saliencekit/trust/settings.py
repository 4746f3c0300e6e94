"""What the trust checks check and how: one settings object, whose fields the command line turns into options.

The field metadata carries each option's help and (for those on the command line) its flag; the command line reads
the defaults from the fields, so no default is written twice. This module does not import torch.

>>> CheckSettings(n_images=8, checks="faithfulness,localization").checks
['faithfulness', 'localization']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saliencekit._options import option
from saliencekit.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    from saliencekit.methods.specs import MethodSpecs


@dataclass
class CheckSettings:
    """What to check and how (the defaults suit a CPU and 32 images of 256x256).

    The command line (``saliencekit check``) takes its options' defaults and help from these fields.

    Attributes:
        methods: names or ``{label: {"method": name, **options}}`` (None: :func:`default_methods`).
        checks: names of registered checks (None: every check that applies).
        n_images: how many images (balanced over classes, chosen with ``seed``).
        seed: seeds the image choice, randomisation, nulls, bootstrap and noise.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (for a run directory; a given model stays where it is).
        layer: CAM layer (None: the engine's choice).
        figures: draw the figures (needs an output folder).
        num_threads: CPU threads for torch during the checks (None: torch's default).
        output: what the model returns (``"auto"``, ``"logits"``, ``"probabilities"``, ``"multilabel"``,
            ``"multilabel_probabilities"``; see :mod:`saliencekit.methods.outputs`); for a run directory ``"auto"``
            means the run's own declaration.
        threshold: probability at or above which a label is positive (multi-label models).
        labels_per_image: multi-label models: each checked image is explained for its positive labels (the most
            probable label when none is positive), at most this many, most probable first; each (image, label)
            pair is one checked row (checks.json ``images``).
        shift: constant of the input-shift check.
        deletion_steps: steps of the deletion / insertion curves.
        road_fractions: shares of pixels removed by ROAD.
        pointing_tolerance: pointing-game tolerance in pixels at 256 pixels a side; scaled to the image size.
        sensitivity_samples: noise draws of max-sensitivity.
        sensitivity_radius: noise bound of max-sensitivity, relative to the image's value range.
        random_label_images: training images used to fit the random-label model.
        random_label_epochs: most epochs of random-label training.
        random_label_accuracy: stop once the random-label model fits this share of its training labels.
        topk: share of pixels of the top-k overlap.
        batch_size: images per engine call.
        similarity_metrics: measures of the randomisation checks (HOG is the slowest).
        randomization_modes: which model-randomisation modes to run: ``"cascading"`` (always; the verdict is
            taken from it) and optionally ``"independent"``; each step recomputes every method's maps.
        costly_images: use only the first ``costly_images`` of the checked images (they are interleaved by
            class, so the subset stays balanced) in the checks of ``costly_checks`` (None: all images).
        costly_passes: a method declaring more forward passes per image than this
            (:meth:`~saliencekit.methods.Method.passes_per_image`: lime and kernel_shap with their default 500 samples)
            makes the ``costly_images`` cap default to ``costly_method_images`` when it is None (recorded in
            ``checks.json`` with the methods that set it off).
        costly_method_images: that default cap.
        costly_checks: the checks the ``costly_images`` cap applies to (None: those that recompute maps, on
            randomised models, shifted inputs, or noisy inputs for max-sensitivity).
        extra: further settings of added checks (written into ``settings`` of ``checks.json``).
    """

    methods: MethodSpecs | None = field(default=None, metadata=option(run=True))
    checks: Sequence[str] | None = field(default=None, metadata=option(
        run=True, flag="--checks", metavar="C1,C2,...",
        help="comma-separated checks; default: every check that applies (localization only when the data has masks)"))
    n_images: int = field(default=32, metadata=option(
        run=True, flag="--images", metavar="N", positive=True, help="number of test images, balanced over classes"))
    seed: int = field(default=0, metadata=option(
        run=True, flag="--seed", help="seed of the image choice, randomisation, null levels, bootstrap and noise"))
    device: str = field(default="auto", metadata=option(
        run=True, flag="--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N"))
    layer: str | None = field(default=None, metadata=option(
        run=True, flag="--layer", metavar="NAME", help="layer of the CAM methods (default: the last convolutional "
                                                       "stage)"))
    figures: bool = field(default=True, metadata=option(run=True, flag="--no-figures", help="write checks.json only"))
    num_threads: int | None = field(default=None, metadata=option(
        run=True, flag="--threads", metavar="THREADS", positive=True, help="CPU threads for torch (default: all)"))
    output: str = field(default="auto", metadata=option(
        run=True, flag="--output", metavar="KIND",
        help="what the model returns: auto (a final Sigmoid/Softmax module is detected and bypassed, so that its "
             "logit is explained), logits, probabilities, multilabel or multilabel_probabilities (docs/outputs.md)"))
    threshold: float = field(default=0.5, metadata=option(
        run=True, flag="--threshold", metavar="P", help="multi-label models: a label is positive at probability >= P"))
    labels_per_image: int = field(default=3, metadata=option(
        run=True, flag="--labels-per-image", metavar="K", positive=True,
        help="multi-label models: explain each image for at most K of its positive labels (most probable first; "
             "the most probable label when none is positive)"))
    shift: float = field(default=1.0, metadata=option(
        flag="--shift", help="constant added to the model input by the input-shift check"))
    deletion_steps: int = 20
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    pointing_tolerance: float = 15.0
    sensitivity_samples: int = 5
    sensitivity_radius: float = 0.02
    random_label_images: int = field(default=128, metadata=option(
        flag="--random-label-images", metavar="N", positive=True,
        help="training images the random-label model is fit on"))
    random_label_epochs: int = field(default=150, metadata=option(
        flag="--random-label-epochs", metavar="E", positive=True,
        help="most epochs to fit the random-label model of data_randomization"))
    random_label_accuracy: float = 0.95
    topk: float = 0.1
    batch_size: int = 16
    similarity_metrics: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
    randomization_modes: tuple[str, ...] = field(default=("cascading", "independent"), metadata=option(
        flag="--randomization-modes", metavar="MODE,...",
        help="model-randomisation modes, comma-separated: cascading (always; the verdict is read from it) and "
             "independent (one layer at a time; as costly again)"))
    costly_images: int | None = field(default=None, metadata=option(
        flag="--costly-images", metavar="N", positive=True,
        help="only the first N checked images in the checks that recompute maps (randomisation, input shift, "
             "sensitivity); default: all, or --costly-method-images when a method costs more than --costly-passes "
             "forward passes per image"))
    costly_passes: int = field(default=300, metadata=option(
        flag="--costly-passes", metavar="P", positive=True,
        help="forward passes per image above which a method (lime, kernel_shap: their samples) caps the checks that "
             "recompute maps at --costly-method-images images"))
    costly_method_images: int = field(default=8, metadata=option(
        flag="--costly-method-images", metavar="N", positive=True,
        help="images of the checks that recompute maps when a costly method is checked and --costly-images is not "
             "given"))
    costly_checks: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from saliencekit.trust.checks import get_check, list_checks

        if isinstance(self.checks, str):
            self.checks = [c.strip() for c in self.checks.split(",") if c.strip()]
        for mode in self.randomization_modes:
            if mode not in ("cascading", "independent"):
                raise UnknownNameError("randomisation mode", mode, ["cascading", "independent"])
        if "cascading" not in self.randomization_modes:
            raise InputError(f"randomization_modes must include 'cascading' (the verdict is taken from it), "
                             f"got {tuple(self.randomization_modes)}")
        if self.costly_method_images < 2:
            raise InputError(f"costly_method_images must be at least 2 (the null level compares different images), "
                             f"got {self.costly_method_images}")
        if self.costly_images is not None and self.costly_images < 2:
            raise InputError(f"costly_images must be at least 2 (the null level compares different images) or None,"
                             f" got {self.costly_images}")
        if isinstance(self.labels_per_image, bool) or not isinstance(self.labels_per_image, int) \
                or self.labels_per_image < 1:
            raise InputError(f"labels_per_image must be a whole number >= 1, got {self.labels_per_image!r}")
        if self.n_images < 2:
            raise InputError(f"n_images must be at least 2 (the null level compares different images), "
                             f"got {self.n_images}")
        if self.costly_checks is None:
            self.costly_checks = tuple(c.name for c in list_checks() if c.recomputes_maps)
        for c in (*self.costly_checks, *(self.checks or ())):
            get_check(c)  # raises UnknownNameError listing the checks

    def to_dict(self) -> dict[str, Any]:
        """The costs as written into ``settings`` of ``checks.json`` (lists for tuples, ``extra`` merged in)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if not f.metadata.get("run") and f.name != "extra"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in {**d, **self.extra}.items()}


__all__ = ["CheckSettings"]

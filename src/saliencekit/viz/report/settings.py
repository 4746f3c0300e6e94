"""What the report shows and how it computes its explanations: one settings object, whose fields the command line
(``saliencekit report``) turns into options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saliencekit._options import option
from saliencekit.errors import InputError

if TYPE_CHECKING:
    from saliencekit.methods.specs import MethodSpecs


@dataclass
class ReportSettings:
    """Settings of :func:`saliencekit.viz.report.build_report`.

    Attributes:
        methods: methods to explain the chosen images with (any form of
            :func:`saliencekit.methods.specs.parse_methods`); None: the methods in ``checks.json``, else
            :func:`saliencekit.methods.specs.default_methods`.
        images: how many test images to explain (correct and wrong predictions of each class).
        device: where to run the model (``"cpu"``, ``"cuda"``).
        seed: seeds the noise of sampling methods (SmoothGrad, RISE...).
        labels_per_image: multi-label models: each image is explained for at most this many of its positive labels
            (most probable first; its most probable label when none is positive).
    """

    methods: MethodSpecs | None = field(default=None, metadata=option(
        flag="--methods", metavar="M1,M2,...",
        help="comma-separated registered method names to show for the chosen images (see `saliencekit explain "
             "--help`); default: the methods (with their options) in checks.json, else a standard set"))
    images: int = field(default=8, metadata=option(
        flag="--images", metavar="N", count=True,
        help="number of test images to explain: correct and wrong predictions of each class"))
    device: str = field(default="cpu", metadata=option(
        flag="--device", help="device for the model: cpu, cuda, cuda:1 ..."))
    seed: int = field(default=0, metadata=option(flag="--seed", help="seed for the noise of sampling methods"))
    labels_per_image: int = field(default=3, metadata=option(
        flag="--labels-per-image", metavar="K", positive=True,
        help="multi-label models: explain each image for at most K of its positive labels (most probable first)"))

    def __post_init__(self) -> None:
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 0:
            raise InputError(f"images must be a whole number >= 0, got {self.images!r}")
        if isinstance(self.labels_per_image, bool) or not isinstance(self.labels_per_image, int) \
                or self.labels_per_image < 1:
            raise InputError(f"labels_per_image must be a whole number >= 1, got {self.labels_per_image!r}")

"""SmoothGrad, SmoothGrad-squared and VarGrad: noise-averaging wrappers over any gradient method.

Smilkov et al. 2017 ("SmoothGrad: removing noise by adding noise"), Eq. 3; VarGrad after
Adebayo et al. 2018. The wrapped method is built from the registry (``base`` and ``base_options``)
and used by composition: only its capability flags are read, no name is special-cased.

Noise convention (documented so that a reference implementation can reproduce it): with
``g = torch.Generator(device=x.device).manual_seed(seed)``, one draw
``eps = torch.randn((samples, C, H, W), generator=g)`` is made per call and noisy copy ``j`` of
image ``i`` is ``x_i + sigma_i * eps_j`` with ``sigma_i = noise * (max(x_i) - min(x_i))``. The same
standard-normal draws serve every image of the batch, so an image's map does not depend on which
other images share its batch (batched results equal per-image results).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size, run_in_chunks
from saliencekit.methods._capture import capture
from saliencekit.methods._precision import Precision
from saliencekit.methods.base import Explanation, Method, preserve_model, reduce_channels
from saliencekit.methods.gradient import PixelGradientMethod, rows_target
from saliencekit.methods.registry import create_method, list_methods, method_class, method_options, register_method
from saliencekit.methods.targets import ResolvedTarget

_STATISTICS = ("mean", "mean_sq", "var")


def _freeze(v: Any) -> Hashable:
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, torch.Tensor):
        return ("tensor", id(v))
    try:
        hash(v)
    except TypeError:
        return ("object", id(v))
    return v


class _NoiseTunnel(Method):
    """Shared machinery of the three SmoothGrad variants (one statistic each).

    Args:
        model: the classifier.
        base: the wrapped gradient method (any method with ``uses_gradients``): its registry name, or a method
            instance built for the same model (``create_method("integrated_gradients", model, steps=16)``), which
            gives the same maps as the name with those options.
        base_options: options of the wrapped method when ``base`` is a name, e.g. ``{"steps": 16}`` for
            integrated gradients (an instance carries its own).
        samples: number of noisy copies ``n`` (default 25).
        noise: noise level; the std is ``noise * (max(x) - min(x))`` per image (default 0.15).
            ``noise=0`` returns exactly the wrapped method.
        seed: seed of the noise generator (on the input's device); ``None`` draws a fresh seed.
        batch_size: noisy images per pass, or "auto".
        reduce: channel reduction of the (N, C, H, W) result: "sum", "abs_sum", "max_abs", "mean".
        precision: given to the wrapped method when it takes a ``precision`` option (default: its own default);
            with an instance, set it on the instance.
        layer: given to the wrapped method when it takes a ``layer`` option (e.g. SmoothGrad of a CAM); with an
            instance, set it on the instance.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> from saliencekit.methods import create_method
    >>> ig = create_method("integrated_gradients", net, steps=4)
    >>> by_instance = SmoothGrad(net, base=ig, samples=2).attribute(torch.ones(1, 1, 2, 2)).maps
    >>> by_name = SmoothGrad(net, base="integrated_gradients", base_options={"steps": 4}, samples=2)
    >>> torch.equal(by_instance, by_name.attribute(torch.ones(1, 1, 2, 2)).maps)
    True
    """

    family = "gradient"
    uses_gradients = True
    display_normalization = "percentile"
    statistic: ClassVar[str] = "mean"

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """What the wrapped method's class states (the noise scale follows the image's range, which the shift keeps)."""
        base = options.get("base", "gradient")
        if isinstance(base, Method):
            return type(base).input_shift_invariant
        return method_class(base).input_shift_invariant if base in list_methods() else None

    def __init__(
        self,
        model: nn.Module,
        *,
        base: str | Method = "gradient",
        base_options: Mapping[str, Any] | None = None,
        samples: int = 25,
        noise: float = 0.15,
        seed: int | None = 0,
        batch_size: BatchSize = "auto",
        reduce: str = "sum",
        precision: Precision | None = None,
        layer: str | nn.Module | None = None,
    ):
        super().__init__(model)
        self._base_given = isinstance(base, Method)
        if isinstance(base, Method):
            self.base: Method = _checked_instance(base, model, base_options, precision, layer)
            base_options = dict(base.params)
        elif isinstance(base, str):
            base_options = dict(base_options or {})
            # Options that ``explain`` hands to every method reach the wrapped method when it takes them.
            accepted = method_options(base)
            for key, value in (("precision", precision), ("layer", layer)):
                if value is not None and key in accepted and key not in base_options:
                    base_options[key] = value
            self.base = create_method(base, model, **base_options)
        else:
            raise InputError(f"base must be a method name (see saliencekit.list_methods()) or a method instance, "
                             f"got {type(base).__name__}")
        if not type(self.base).uses_gradients:
            raise InputError(f"{self.name or 'smoothgrad'} wraps gradient methods; {base!r} does not use gradients "
                             "(choose e.g. gradient, gradient_x_input, integrated_gradients, guided_backprop)")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"samples must be a positive int, got {samples!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
            raise InputError(f"noise must be a number >= 0 (a fraction of the image's value range), got {noise!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.base_name = self.base.name or type(self.base).__name__
        self.base_options = base_options
        self.samples, self.noise, self.seed = samples, float(noise), seed
        self.batch_size = check_batch_size(batch_size)
        self.reduce = reduce
        self._store_params(base=self.base_name, base_options=base_options, samples=samples, noise=noise, seed=seed,
                           batch_size=batch_size, reduce=reduce)
        # Inherit what holds of the statistic of the wrapped method.
        self.multiplies_by_inputs = type(self.base).multiplies_by_inputs  # type: ignore[misc]
        self.needs_layer = type(self.base).needs_layer  # type: ignore[misc]
        self.works_on_torchscript = type(self.base).works_on_torchscript  # type: ignore[misc]

    def share_key(self) -> Hashable | None:
        base = ("instance", id(self.base)) if self._base_given else (self.base_name, _freeze(self.base_options))
        return ("noise_tunnel", *base, self.samples, self.noise, self.seed, self.batch_size)

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        return self.attribute_shared([self], inputs, target)[0]

    @classmethod
    def attribute_shared(cls, methods: Sequence[Method], inputs: torch.Tensor, target: Any = None) -> list[Explanation]:
        """One set of noisy samples and gradients for every variant in ``methods`` (equal share keys)."""
        first = methods[0]
        assert isinstance(first, _NoiseTunnel)
        for m in methods:
            if not isinstance(m, _NoiseTunnel) or m.share_key() != first.share_key():
                raise InputError("attribute_shared needs SmoothGrad variants with equal options")
        stats = first._statistics(inputs, target)
        out = []
        for m in methods:
            assert isinstance(m, _NoiseTunnel)
            attr = stats[m.statistic]
            out.append(Explanation(
                method=m.name, maps=reduce_channels(attr, m.reduce),
                attributions=attr if stats["has_attributions"] else None,  # a wrapped CAM has maps only
                layer_maps=None, scores=stats["scores"], targets=stats["targets"], predictions=stats["predictions"],
                params=m.params, extras={},
            ))
        return out

    # ----------------------------------------------------------------------------------- engine

    def _statistics(self, inputs: torch.Tensor, target: Any) -> dict[str, Any]:
        base = self.base
        pixel = isinstance(base, PixelGradientMethod)
        rule = base.relu_rule if pixel else None
        with preserve_model(self.model), capture(self.model, relu_rule=rule):
            output, resolved, predictions = self._resolve(inputs, target)
            clean_scores = resolved.score(output).to(inputs.dtype)
            n = inputs.shape[0]
            samples = 1 if self.noise == 0 else self.samples
            flat = inputs.flatten(1)
            sigma = (self.noise * (flat.amax(1) - flat.amin(1))).view(n, 1, 1, 1)
            gen = torch.Generator(device=inputs.device)
            gen.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
            eps = torch.randn((samples, *inputs.shape[1:]), generator=gen, device=inputs.device, dtype=inputs.dtype)
            acc: dict[str, Any] = {}
            acc_dtype = torch.float64 if inputs.device.type == "cpu" or inputs.dtype == torch.float64 else torch.float32

            def chunk(start: int, stop: int) -> None:
                rows = torch.arange(start, stop, device=inputs.device)
                img, smp = rows % n, rows // n
                noisy = inputs[img] + sigma[img] * eps[smp]
                a, has_attr = _wrapped_attributions(base, noisy, rows_target(resolved, start, stop), pixel)
                acc["has_attributions"] = has_attr
                a = a.to(acc_dtype)
                if "s1" not in acc:
                    acc["s1"] = torch.zeros((n, *a.shape[1:]), dtype=acc_dtype, device=inputs.device)
                    acc["s2"] = torch.zeros_like(acc["s1"])
                acc["s1"].index_add_(0, img, a)
                acc["s2"].index_add_(0, img, a * a)

            run_in_chunks(chunk, samples * n, self.batch_size, self.model, inputs, backward=True)
        mean = acc["s1"] / samples
        mean_sq = acc["s2"] / samples
        var = (mean_sq - mean * mean).clamp_min(0)
        if samples == 1:
            var = torch.zeros_like(mean)
        return {
            "has_attributions": acc["has_attributions"],
            "mean": mean.to(inputs.dtype), "mean_sq": mean_sq.to(inputs.dtype), "var": var.to(inputs.dtype),
            "scores": clean_scores, "targets": resolved.class_indices().to(inputs.device), "predictions": predictions,
        }


def _checked_instance(base: Method, model: nn.Module, base_options: Mapping[str, Any] | None, precision: Any,
                      layer: Any) -> Method:
    """A method instance given as the base: built for ``model``, with its options on itself."""
    if base.model is not model:
        raise InputError(f"the base method {type(base).__name__} was built for another model; build it for the model "
                         "SmoothGrad explains (create_method(name, model, ...)) or give its name")
    given = [k for k, v in (("base_options", base_options or None), ("precision", precision), ("layer", layer))
             if v is not None]
    if given:
        raise InputError(f"{', '.join(given)} cannot be combined with a method instance as the base; set them on "
                         "the instance (create_method(name, model, **options)) or give the base by name")
    return base


def _wrapped_attributions(
    base: Method, noisy: torch.Tensor, target: ResolvedTarget, pixel: bool
) -> tuple[torch.Tensor, bool]:
    """The wrapped method's attribution (rows, C, H, W) of noisy rows, or its maps (rows, 1, H, W) when it
    has no attribution (then the flag is False)."""
    if pixel:
        assert isinstance(base, PixelGradientMethod)
        attr, _scores, _extras = base._compute(noisy, target)
        return attr, True
    # Any other gradient method: through its public entry point, with the target fixed per row.
    fixed: Any = target.fn if target.classes is None else target.classes
    e = base.attribute(noisy, fixed)
    return (e.attributions, True) if e.attributions is not None else (e.maps[:, None], False)


@register_method("smoothgrad")
class SmoothGrad(_NoiseTunnel):
    """SmoothGrad (Smilkov et al. 2017, Eq. 3): the mean of the wrapped method over noisy copies.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(32, 1))
    >>> SmoothGrad(net, samples=4).attribute(torch.randn(2, 1, 4, 4)).maps.shape
    torch.Size([2, 4, 4])
    """

    description = "SmoothGrad: mean of a gradient method over noisy copies of the input (Smilkov 2017)."
    statistic = "mean"


@register_method("smoothgrad_sq")
class SmoothGradSquared(_NoiseTunnel):
    """SmoothGrad-squared (Hooker et al. 2019): the mean of the squared wrapped attributions over noisy copies.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> bool((SmoothGradSquared(net, samples=3).attribute(torch.randn(1, 1, 2, 2)).maps >= 0).all())
    True
    """

    description = "SmoothGrad-squared: mean of squared attributions over noisy copies (Hooker 2019)."
    statistic = "mean_sq"


@register_method("vargrad")
class VarGrad(_NoiseTunnel):
    """VarGrad (Adebayo et al. 2018): the variance (1/n, population) of the wrapped attributions over noisy copies.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> float(VarGrad(net, samples=3).attribute(torch.randn(1, 1, 2, 2)).maps.abs().max()) < 1e-6  # linear model
    True
    """

    description = "VarGrad: variance of a gradient method over noisy copies of the input (Adebayo 2018)."
    statistic = "var"

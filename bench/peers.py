"""Adapters that compute each peer library's map on the same model, batch, target and layer.

Peers (installed with ``pip install -e .[bench]``; never runtime dependencies of saliencekit):

- captum: Saliency, InputXGradient, IntegratedGradients, NoiseTunnel (smoothgrad / smoothgrad_sq /
  vargrad), GuidedBackprop, Deconvolution, LayerGradCam;
- pytorch-grad-cam (``grad-cam`` on PyPI, module ``pytorch_grad_cam``): GradCAM, GradCAMPlusPlus,
  XGradCAM, HiResCAM, LayerCAM, ScoreCAM, EigenCAM, AblationCAM, FullGrad;
- torch-cam (``torchcam``): GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM;
- zennit: the LRP composites EpsilonPlus and EpsilonGammaBox (with its batch-norm canonizers);
- captum again for DeepLift and DeepLiftShap;
- vision transformers (timm ViT/DeiT; ``tokens=`` given): pytorch-grad-cam's GradCAM with its documented ViT
  ``reshape_transform``, and, for the attention methods, which no installed library has, the authors' published
  algorithms run as their code runs them (one image per call, attention and its gradient caught by hooks on a
  twin of the model with timm's fused attention switched off): jacobgil/vit-explain's ``VITAttentionRollout``
  and Chefer et al.'s ``generate_relevance`` (Transformer-MM-Explainability), plus the same hooks batched (what a
  careful user would write), see :func:`attention_peers`.

Single-logit models (the lesson CNN): the peers index the output by class, so they get the model
wrapped in :class:`TwoLogit`, which outputs ``[-z, z]``: class 1 is the logit ``z`` and class 0 is
``-z``, exactly saliencekit's target definition. The wrapper adds one ``torch.cat`` per pass.

Each adapter returns maps in the form the peer produces them; :func:`agreement` compares them with
ours in the matching form (raw attributions, raw layer-resolution CAMs, or min-max normalised
input-resolution CAMs for pytorch-grad-cam, which normalises every map and resizes it with OpenCV).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_DEEPLIFT_NOTE = ("captum's module hooks go wrong where two non-linearity modules follow each other (a ReLU right "
                  "before a MaxPool: captum issue #1104), so its attributions do not sum to S(x) - S(x') there; "
                  "agreement is exact on networks without that (bench/propagation_peers.py)")

#: Output forms a peer may produce.
ATTRIBUTIONS = "attributions"  # raw (N, C, H, W) in input space
LAYER_RAW = "layer_raw"  # raw CAM at the layer's resolution (N, h, w)
INPUT_MINMAX = "input_minmax"  # CAM min-max normalised per image at input resolution (N, H, W)
MAPS_MINMAX = "maps_minmax"  # our input-resolution maps and the peer's (N, H, W), both min-max normalised per image


class TwoLogit(nn.Module):
    """``[-z, z]`` from a single-logit model, so that class 1 is ``z`` and class 0 is ``-z``.

    >>> TwoLogit(nn.Identity())(torch.tensor([[2.0]])).tolist()
    [[-2.0, 2.0]]
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if z.ndim == 1:
            z = z[:, None]
        return torch.cat([-z, z], dim=1)


@dataclass
class Peer:
    """One peer implementation racing one of our entries."""

    key: str  # "captum.Saliency"
    library: str
    races: str  # the name of our entry it races
    run: Callable[[], Any]
    output: str  # ATTRIBUTIONS, LAYER_RAW or INPUT_MINMAX
    note: str = ""
    parts: tuple[str, ...] = ()  # a composite peer: the sum of these peers' times, round by round


def versions() -> dict[str, str | None]:
    """Installed versions of the peer libraries (None when missing)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("captum", "grad-cam", "torchcam", "zennit"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def build_peers(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    layer: nn.Module,
    *,
    single_logit: bool,
    races: set[str],
    ig: dict[str, Any] | None = None,
    sg: dict[str, Any] | None = None,
    score_batch: int = 64,
    x_multi: torch.Tensor | None = None,
    classes_multi: Sequence[int] | None = None,
    deeplift_shap_baselines: torch.Tensor | None = None,
    tokens: tuple[int, int, int] | None = None,
    shap: dict[str, Any] | None = None,
) -> list[Peer]:
    """Peer adapters for the entries named in ``races``.

    Args:
        model: the (unwrapped) model; wrapped in :class:`TwoLogit` when ``single_logit``.
        x: the batch for single-pass methods; ``x_multi`` (default ``x``) for multi-pass ones.
        classes: the explained class of each image of ``x`` (``classes_multi`` for ``x_multi``).
        layer: the CAM layer (a module of ``model``).
        races: our entry names to build peers for (e.g. {"gradient", "gradcam", "cams5"}).
        ig: captum IntegratedGradients keywords (n_steps, method, baselines).
        sg: captum NoiseTunnel keywords (nt_samples, stdevs).
        score_batch: masked images per forward for the Score-CAM peers.
        deeplift_shap_baselines: the reference images (K, C, H, W) our deeplift_shap entry was given.
        tokens: ``(prefix, gh, gw)`` for a vision transformer whose CAM layer outputs tokens: the CAM peers get
            pytorch-grad-cam's ``reshape_transform`` (captum's LayerGradCam and torch-cam, which need (N, C, h, w)
            maps, are left out) and the attention peers are added.
        shap: the SHAP family's settings: ``references`` (K, C, H, W), ``samples`` (GradientShap draws), ``stdevs``
            (GradientShap's noise for gradient_shap), ``coalitions`` (Lime / KernelShap samples), ``grid`` (cells).
    """
    net = TwoLogit(model) if single_logit else model
    x_multi = x if x_multi is None else x_multi
    classes = [int(c) for c in classes]
    classes_multi = classes if classes_multi is None else [int(c) for c in classes_multi]
    target = torch.tensor(classes, device=x.device)
    target_multi = torch.tensor(classes_multi, device=x.device)
    wrap_note = "model wrapped to output [-z, z]" if single_logit else ""
    peers: list[Peer] = []

    def add(key: str, library: str, race: str, run: Callable[[], Any] | None, output: str, note: str = "",
            parts: tuple[str, ...] = (), also: Sequence[str] = ()) -> None:
        if race in races or any(a in races for a in also):
            note = "; ".join(n for n in (note, wrap_note) if n)
            peers.append(Peer(key, library, race, run or (lambda: None), output, note, parts))

    if _has("captum"):
        import captum.attr as ca

        def captum_input(cls: Any, **kw: Any) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                return cls(net).attribute(x, target=target, **kw).detach()

            return run

        add("captum.Saliency", "captum", "gradient", captum_input(ca.Saliency, abs=False), ATTRIBUTIONS)
        add("captum.InputXGradient", "captum", "gradient_x_input", captum_input(ca.InputXGradient), ATTRIBUTIONS)
        add("captum.GuidedBackprop", "captum", "guided_backprop", captum_input(ca.GuidedBackprop), ATTRIBUTIONS)
        add("captum.Deconvolution", "captum", "deconvnet", captum_input(ca.Deconvolution), ATTRIBUTIONS)

        def layer_gradcam() -> torch.Tensor:
            out = ca.LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
            return out.detach()[:, 0]

        if tokens is None:
            add("captum.LayerGradCam", "captum", "gradcam", layer_gradcam, LAYER_RAW)

        def captum_deeplift() -> torch.Tensor:
            black = x.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(x).contiguous()  # our default baseline
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # captum's note about its hooks, every call
                return ca.DeepLift(net).attribute(x, black, target=target).detach()

        add("captum.DeepLift", "captum", "deeplift", captum_deeplift, ATTRIBUTIONS, _DEEPLIFT_NOTE)
        if deeplift_shap_baselines is not None:
            def captum_deeplift_shap() -> torch.Tensor:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return ca.DeepLiftShap(net).attribute(x_multi, deeplift_shap_baselines,
                                                          target=target_multi).detach()

            add("captum.DeepLiftShap", "captum", "deeplift_shap", captum_deeplift_shap, ATTRIBUTIONS,
                f"the same {deeplift_shap_baselines.shape[0]} reference images; {_DEEPLIFT_NOTE}")
        if ig is not None:
            def captum_ig() -> torch.Tensor:
                return ca.IntegratedGradients(net).attribute(x_multi, target=target_multi, **ig).detach()

            add("captum.IntegratedGradients", "captum", "integrated_gradients", captum_ig, ATTRIBUTIONS,
                f"n_steps={ig.get('n_steps')}, method={ig.get('method')}, internal_batch_size=None (all at once)")
        if sg is not None:
            def captum_nt(nt_type: str) -> Callable[[], torch.Tensor]:
                def run() -> torch.Tensor:
                    nt = ca.NoiseTunnel(ca.Saliency(net))
                    return nt.attribute(x_multi, target=target_multi, nt_type=nt_type, abs=False, **sg).detach()

                return run

            add("captum.NoiseTunnel(smoothgrad)", "captum", "smoothgrad", captum_nt("smoothgrad"), ATTRIBUTIONS,
                f"nt_samples={sg.get('nt_samples')}, stdevs={sg.get('stdevs'):.4g} (one sigma for the batch); "
                "noise differs, so agreement is statistical", also=["smoothgrad_family"])
            for t in ("smoothgrad_sq", "vargrad"):
                add(f"captum.NoiseTunnel({t})", "captum", f"_{t}", captum_nt(t), ATTRIBUTIONS,
                    also=["smoothgrad_family"])
            add("captum.NoiseTunnel x3", "captum", "smoothgrad_family", None, ATTRIBUTIONS,
                "three NoiseTunnel calls (smoothgrad, smoothgrad_sq, vargrad), each drawing its own noise; "
                "time = sum of the three, round by round",
                parts=("captum.NoiseTunnel(smoothgrad)", "captum.NoiseTunnel(smoothgrad_sq)",
                       "captum.NoiseTunnel(vargrad)"))

        if shap is not None:
            _add_shap_peers(add, ca, net, x_multi, target_multi, shap)

    if _has("zennit"):
        def zennit_lrp(composite: str) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                import zennit.composites as zc
                from zennit.attribution import Gradient
                from zennit.canonizers import SequentialMergeBatchNorm
                from zennit.torchvision import ResNetCanonizer

                resnet = any(type(m).__name__ in ("BasicBlock", "Bottleneck") for m in net.modules())
                canonizers = [ResNetCanonizer()] if resnet else [SequentialMergeBatchNorm()]
                if composite == "EpsilonGammaBox":
                    flat = x.flatten(1)
                    low = flat.amin(1).view(-1, 1, 1, 1).expand_as(x)
                    high = flat.amax(1).view(-1, 1, 1, 1).expand_as(x)
                    comp = zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
                else:
                    comp = zc.EpsilonPlus(canonizers=canonizers)
                with Gradient(model=net, composite=comp) as attributor:
                    _, relevance = attributor(x, lambda out: torch.eye(out.shape[1], dtype=out.dtype,
                                                                       device=out.device)[target] * out)
                return relevance.detach()

            return run

        note = ("zennit's canonised batch norm still divides by sqrt(1 + eps): about 5e-6 relative per batch norm "
                "on the path (bench/propagation_peers.py: equal to 1e-12 with eps = 0)")
        add("zennit.EpsilonPlus", "zennit", "lrp", zennit_lrp("EpsilonPlus"), ATTRIBUTIONS, note)
        add("zennit.EpsilonGammaBox", "zennit", "lrp_epsilon_gamma_box", zennit_lrp("EpsilonGammaBox"),
            ATTRIBUTIONS, f"bounds: each image's minimum and maximum (our default); {note}")

    if _has("pytorch_grad_cam"):
        import pytorch_grad_cam as pgc
        import pytorch_grad_cam.score_cam as pgc_score
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        # Its ScoreCAM draws one tqdm bar per image on stderr; silence it (the bar costs ~nothing).
        pgc_score.tqdm = SimpleNamespace(tqdm=lambda it, **_kw: it)

        pgc_targets = [ClassifierOutputTarget(c) for c in classes]
        pgc_targets_multi = [ClassifierOutputTarget(c) for c in classes_multi]

        reshape = None
        if tokens is not None:
            prefix, gh, gw = tokens

            def reshape(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's ViT recipe, prefix tokens dropped
                return t[:, prefix:, :].reshape(t.size(0), gh, gw, t.size(2)).permute(0, 3, 1, 2)

        def pgc_run(cls: Any, multi: bool = False) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with cls(model=net, target_layers=[layer], reshape_transform=reshape) as cam:
                    if multi:
                        cam.batch_size = score_batch
                        out = cam(input_tensor=x_multi, targets=pgc_targets_multi)
                    else:
                        out = cam(input_tensor=x, targets=pgc_targets)
                return torch.from_numpy(np.asarray(out))

            return run

        note = "returns maps min-max normalised per image and resized with OpenCV"
        pgc_cams = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
                    "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}
        for race, cls in pgc_cams.items():
            add(f"pytorch-grad-cam.{cls.__name__}", "pytorch-grad-cam", race, pgc_run(cls), INPUT_MINMAX, note,
                also=["cams5"])
        add("pytorch-grad-cam x5", "pytorch-grad-cam", "cams5", None, INPUT_MINMAX,
            "five separate calls (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM), one forward + full "
            "backward each; time = sum of the five, round by round",
            parts=tuple(f"pytorch-grad-cam.{c.__name__}" for c in pgc_cams.values()))
        add("pytorch-grad-cam.ScoreCAM", "pytorch-grad-cam", "scorecam", pgc_run(pgc.ScoreCAM, multi=True),
            INPUT_MINMAX, f"{note}; batch_size={score_batch}")
        add("pytorch-grad-cam.EigenCAM", "pytorch-grad-cam", "eigencam", pgc_run(pgc.EigenCAM), INPUT_MINMAX,
            f"{note}; keeps LAPACK's sign of the principal direction (saliencekit: sum of its weights > 0), so its "
            "map can be the mirror image of ours (low or negative r)")
        add("pytorch-grad-cam.AblationCAM", "pytorch-grad-cam", "ablationcam", _pgc_ablation(pgc, net, layer, x_multi,
            pgc_targets_multi, score_batch), INPUT_MINMAX,
            f"{note}; batch_size={score_batch}; weights (S - S_k) / S (mirrored where S < 0); runs on a deep copy "
            "(it swaps the layer for its AblationLayer during the call)")
        add("pytorch-grad-cam.FullGrad", "pytorch-grad-cam", "fullgrad", _pgc_fullgrad(pgc, net, x, pgc_targets),
            MAPS_MINMAX, "reads nn.Conv2d and nn.BatchNorm2d; per-channel scaling with max + 1e-7; OpenCV resizing; "
            "final map min-max normalised (ours compared after the same normalisation)")

    if tokens is not None:
        peers += attention_peers(model, x, classes, races, tokens[0])
    if _has("torchcam") and tokens is None:
        import torchcam.methods as tm

        def tc_run(cls: Any, score: bool = False) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                if score:
                    with cls(net, target_layer=layer, batch_size=score_batch, input_shape=tuple(x.shape[1:])) as ext:
                        with torch.no_grad():
                            net(x_multi)
                        cams = ext(class_idx=classes_multi, normalized=False)
                else:
                    with cls(net, target_layer=layer, input_shape=tuple(x.shape[1:])) as ext:
                        scores = net(x)
                        cams = ext(class_idx=classes, scores=scores, normalized=False)
                return cams[0].detach()

            return run

        tc_cams = {"gradcam": tm.GradCAM, "gradcam++": tm.GradCAMpp, "xgradcam": tm.XGradCAM, "layercam": tm.LayerCAM}
        for race, cls in tc_cams.items():
            note = ""
            if race == "gradcam++":
                note = ("torch-cam's alpha denominator sums A*g^3 over the map, and its in-place division acts on a "
                        "masked copy, so alpha = g^2: a different (buggy) formula")
            add(f"torchcam.{cls.__name__}", "torchcam", race, tc_run(cls), LAYER_RAW, note, also=["cams5"])
        add("torchcam x4", "torchcam", "cams5", None, LAYER_RAW,
            "four separate calls (GradCAM, GradCAMpp, XGradCAM, LayerCAM; torch-cam has no HiResCAM); "
            "time = sum of the four, round by round",
            parts=tuple(f"torchcam.{c.__name__}" for c in tc_cams.values()))
        add("torchcam.ScoreCAM", "torchcam", "scorecam", tc_run(tm.ScoreCAM, score=True), LAYER_RAW,
            f"batch_size={score_batch}; masks from min-max normalised layer maps, scores minus the clean score "
            "(softmax is shift-invariant, so the same weights)")
    return peers


# ------------------------------------------------------------------------------ the attention methods


def _attention_twin(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """A copy of a timm ViT/DeiT with its fused attention off and the hooks of the authors' code: a forward hook on
    each ``attn_drop`` (which receives the attention probabilities on timm's non-fused path) keeping its output, and
    a tensor hook on it keeping the gradient (Chefer et al.'s ``save_attn_gradients``). The user's model is not
    touched (the bench times ours on it, fused)."""
    import copy

    twin = copy.deepcopy(model)
    attentions: list[torch.Tensor] = []
    gradients: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        attentions.append(out.detach())
        if out.requires_grad:
            out.register_hook(lambda g: gradients.append(g.detach()))

    blocks = getattr(twin, "blocks", None)
    if blocks is None:
        raise ValueError("the attention peers read timm ViT/DeiT models (model.blocks[i].attn)")
    for blk in blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(hook)
    return twin, attentions, gradients


def attention_peers(model: nn.Module, x: torch.Tensor, classes: Sequence[int], races: set[str],
                    prefix: int) -> list[Peer]:
    """The authors' algorithms for ``attention_rollout`` and ``transformer_attribution`` (timm ViT/DeiT).

    - ``vit-explain.VITAttentionRollout``: jacobgil/vit-explain ``vit_rollout.py`` as published, one image per call
      (its ``rollout`` reads ``result[0, 0, 1:]``): forward under ``no_grad`` with hooks, mean head fusion, nothing
      discarded, ``(fused + I) / 2`` divided by ``sum(dim=-1)`` (rows sum to 1 with mean fusion, so its column
      broadcasting, vit-explain issue #16, changes nothing here), multiplied through the layers; its last step
      (division by the maximum) left out so that the raw maps compare.
    - ``Chefer.generate_relevance``: hila-chefer/Transformer-MM-Explainability's ViT notebook, one image per call:
      forward, ``model.zero_grad()``, ``one_hot.backward()`` (parameter gradients included, as there), rule 5
      ``relu(grad * cam)`` averaged over the heads, rule 6 ``R += cam @ R``; ``R[0, 1:]``.
    - ``hooks batched``: both algorithms on the whole batch with the same hooks, the score's gradient to the
      attention only (no parameter gradients): what a careful user would write.
    Only the class token is read (``R[0, prefix:]``), as in the authors' code; ours reads the readout tokens, which
    for a class-token ViT is the same token.
    """
    twin, attentions, gradients = _attention_twin(model)
    twin.eval()
    classes = [int(c) for c in classes]
    n = x.shape[0]
    peers: list[Peer] = []

    def rollout_rows(atts: list[torch.Tensor]) -> torch.Tensor:  # (B, patches), vit-explain's loop, batched
        tokens = atts[0].shape[-1]
        eye = torch.eye(tokens, dtype=atts[0].dtype, device=atts[0].device)
        result = eye.expand(atts[0].shape[0], tokens, tokens)
        for attention in atts:
            fused = attention.mean(1)
            a = (fused + eye) / 2
            a = a / a.sum(dim=-1)[..., None]
            result = a @ result
        return result[:, 0, prefix:]

    def relevance_rows(atts: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
        tokens = atts[0].shape[-1]
        r = torch.eye(tokens, dtype=atts[0].dtype, device=atts[0].device).expand(atts[0].shape[0], tokens, tokens)
        for cam, grad in zip(atts, grads):
            cam = (grad * cam).clamp(min=0).mean(1)  # rule 5
            r = r + cam @ r  # rule 6
        return r[:, 0, prefix:]

    def grid(rows: torch.Tensor) -> torch.Tensor:
        side = round(rows.shape[-1] ** 0.5)
        return rows.reshape(rows.shape[0], side, -1)

    def vit_explain() -> torch.Tensor:
        maps = []
        for i in range(n):
            attentions.clear()
            with torch.no_grad():
                twin(x[i:i + 1])
            maps.append(rollout_rows(attentions))
        return grid(torch.cat(maps))

    def chefer() -> torch.Tensor:
        maps = []
        for i in range(n):
            attentions.clear()
            gradients.clear()
            output = twin(x[i:i + 1])
            one_hot = torch.zeros_like(output)
            one_hot[0, classes[i]] = 1
            twin.zero_grad()
            (one_hot * output).sum().backward()
            maps.append(relevance_rows(attentions, gradients[::-1]))
        twin.zero_grad(set_to_none=True)
        return grid(torch.cat(maps))

    def hooks_rollout() -> torch.Tensor:
        attentions.clear()
        with torch.no_grad():
            twin(x)
        return grid(rollout_rows(attentions))

    params = list(twin.parameters())

    def hooks_relevance(also_rollout: bool = False) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            attentions.clear()
            gradients.clear()
            for p in params:
                p.requires_grad_(False)
            try:
                xg = x.detach().requires_grad_(True)
                output = twin(xg)
                output.gather(1, torch.tensor(classes, device=x.device)[:, None]).sum().backward()
            finally:
                for p in params:
                    p.requires_grad_(True)
            relevance = grid(relevance_rows(attentions, gradients[::-1]))
            if also_rollout:  # the rollout map is returned: the entry's first method, compared with it
                return grid(rollout_rows(attentions))
            return relevance

        return run

    def add(key: str, library: str, race: str, run: Callable[[], Any] | None, note: str,
            parts: tuple[str, ...] = ()) -> None:
        if race in races or (not parts and "attention2" in races):
            peers.append(Peer(key, library, race, run or (lambda: None), LAYER_RAW, note, parts))

    per_image = "the authors' code, one image per call, hooks on a non-fused twin of the model"
    add("vit-explain.VITAttentionRollout", "vit-explain (re-written)", "attention_rollout", vit_explain,
        f"{per_image}; mean fusion, discard_ratio 0, its division by the maximum left out")
    add("Chefer.generate_relevance", "Transformer-MM-Explainability (re-written)", "transformer_attribution", chefer,
        f"{per_image}; backward with parameter gradients, as published")
    batched = "the same algorithm on the whole batch, hooks on a non-fused twin, gradient to the attention only"
    add("hooks.rollout", "hooks (batched)", "attention_rollout", hooks_rollout, batched)
    add("hooks.relevance", "hooks (batched)", "transformer_attribution", hooks_relevance(), batched)
    add("hooks.relevance+rollout", "hooks (batched)", "attention2", hooks_relevance(also_rollout=True),
        "both maps from one batched forward + backward with hooks (what ours shares)")
    add("authors x2", "vit-explain + Transformer-MM-Explainability (re-written)", "attention2", None,
        "vit-explain's rollout and Chefer's relevance as published, separately; time = sum of the two, round by "
        "round", parts=("vit-explain.VITAttentionRollout", "Chefer.generate_relevance"))
    return peers


def _add_shap_peers(add: Callable[..., None], ca: Any, net: nn.Module, x: torch.Tensor, target: torch.Tensor,
                    shap: dict[str, Any]) -> None:
    """captum's GradientShap (expected_gradients, gradient_shap), Lime and KernelShap on the same grid."""
    from captum._utils.models.linear_model import SkLearnRidge

    from saliencekit.methods.lime import lime_kernel
    from saliencekit.methods.superpixels import grid_segments

    refs, n = shap["references"], shap["samples"]
    draws = "their own draws (NumPy and torch's global generators): agreement is statistical"

    def gradient_shap(stdevs: float) -> Callable[[], torch.Tensor]:
        return lambda: ca.GradientShap(net).attribute(x, refs, n_samples=n, stdevs=stdevs, target=target).detach()

    add("captum.GradientShap", "captum", "expected_gradients", gradient_shap(0.0), ATTRIBUTIONS,
        f"n_samples={n}, stdevs=0, the same 16 reference images; {draws}")
    add("captum.GradientShap(noise)", "captum", "gradient_shap", gradient_shap(shap["stdevs"]), ATTRIBUTIONS,
        f"n_samples={n}, stdevs={shap['stdevs']:.4g} (0.1 x the mean range, one std for the batch); {draws}")
    mask = grid_segments(x.shape[-2], x.shape[-1], (shap["grid"], shap["grid"]), x.device)[None, None]

    def lime_similarity(_a: Any, _b: Any, sample: torch.Tensor, **_kw: Any) -> torch.Tensor:
        return lime_kernel(sample.bool(), 0.25).to(torch.float32)

    def lime() -> torch.Tensor:
        explainer = ca.Lime(net, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=lime_similarity)
        return torch.stack([explainer.attribute(x[i:i + 1], target=int(target[i]), feature_mask=mask, baselines=0.0,
                                                n_samples=shap["coalitions"])[0] for i in range(x.shape[0])]).detach()

    add("captum.Lime", "captum", "lime", lime, ATTRIBUTIONS,
        f"n_samples={shap['coalitions']}, the same grid, LIME's kernel and Ridge(alpha=1) (captum's defaults are a "
        "Lasso and a kernel in input space); one call per image, one forward per coalition (perturbations_per_eval=1)"
        f"; {draws}")

    def kernel_shap() -> torch.Tensor:
        return torch.stack([ca.KernelShap(net).attribute(x[i:i + 1], target=int(target[i]), feature_mask=mask,
                                                         baselines=0.0, n_samples=shap["coalitions"])[0]
                            for i in range(x.shape[0])]).detach()

    add("captum.KernelShap", "captum", "kernel_shap", kernel_shap, ATTRIBUTIONS,
        f"n_samples={shap['coalitions']}, the same grid; constraints by weight 1e6; one call per image, "
        f"perturbations_per_eval=1; {draws}")


def _pgc_ablation(pgc: Any, net: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[Any],
                  batch: int) -> Callable[[], torch.Tensor]:
    import copy

    import pytorch_grad_cam.ablation_cam as pgc_ablation

    pgc_ablation.tqdm = SimpleNamespace(tqdm=lambda it, **_kw: it)  # its per-image progress bar
    name = next(n for n, m in net.named_modules() if m is layer)
    twins: list[nn.Module] = []

    def run() -> torch.Tensor:
        if not twins:  # AblationCAM swaps the target layer out of the model during its call: give it a copy
            twins.append(copy.deepcopy(net))
        twin = twins[0]
        with pgc.AblationCAM(model=twin, target_layers=[twin.get_submodule(name)], batch_size=batch) as cam:
            return torch.from_numpy(np.asarray(cam(input_tensor=x, targets=targets)))

    return run


def _pgc_fullgrad(pgc: Any, net: nn.Module, x: torch.Tensor, targets: list[Any]) -> Callable[[], torch.Tensor]:
    import contextlib
    import io

    def run() -> torch.Tensor:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints that target_layers are ignored
            cam = pgc.FullGrad(model=net, target_layers=[])
        with cam:
            return torch.from_numpy(np.asarray(cam(input_tensor=x, targets=targets)))

    return run


# -------------------------------------------------------------------------------------- agreement


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.double().flatten(1)
    b = b.double().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den
    both_flat = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    return torch.where(both_flat, torch.ones_like(r), torch.nan_to_num(r, nan=0.0))


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo = flat.amin(1)[:, None, None]
    hi = flat.amax(1)[:, None, None]
    return (m - lo) / (hi - lo + 1e-7)


def _as_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    return v.detach().cpu().float()


def agreement(ours: Any, theirs: Any, output: str, upsample_to: tuple[int, int] | None = None) -> dict[str, Any]:
    """Compare our explanation with a peer's output.

    Args:
        ours: our :class:`~saliencekit.methods.Explanation`.
        theirs: the peer's output (tensor or array) in the form ``output``.
        output: ATTRIBUTIONS (compare ``ours.attributions``), LAYER_RAW (``ours.layer_maps``) or
            INPUT_MINMAX (our layer maps resized with OpenCV like pytorch-grad-cam, both min-max normalised).

    Returns:
        Pearson correlation per image (min and mean), the largest absolute difference relative to the
        largest magnitude, and ``allclose`` (rtol 1e-3, atol 1e-4 x the largest magnitude).
    """
    theirs_t = _as_tensor(theirs)
    if output == ATTRIBUTIONS:
        mine = ours.attributions
        if mine is None:
            mine = ours.maps[:, None]
            theirs_t = theirs_t.sum(1, keepdim=True)
        mine = mine.detach().cpu().float()
    elif output == LAYER_RAW:
        mine = ours.layer_maps.detach().cpu().float()
    elif output == INPUT_MINMAX:
        lm = ours.layer_maps.detach().cpu().float().clamp_min(0)
        try:
            import cv2

            size = (theirs_t.shape[-1], theirs_t.shape[-2])
            mine = torch.stack([torch.from_numpy(cv2.resize(_minmax(m[None])[0].numpy(), size)) for m in lm])
        except ImportError:
            mine = F.interpolate(lm[:, None], size=theirs_t.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        mine = _minmax(mine)
        theirs_t = _minmax(theirs_t)
    elif output == MAPS_MINMAX:
        mine = _minmax(ours.maps.detach().cpu().float())
        theirs_t = _minmax(theirs_t)
    else:
        raise ValueError(output)
    if mine.shape != theirs_t.shape:
        return {"error": f"shape mismatch: ours {tuple(mine.shape)} vs theirs {tuple(theirs_t.shape)}"}
    r = _pearson_rows(mine, theirs_t)
    scale = float(max(mine.abs().max(), theirs_t.abs().max(), 1e-12))
    diff = float((mine - theirs_t).abs().max()) / scale
    return {
        "compared": output,
        "pearson_min": float(r.min()),
        "pearson_mean": float(r.mean()),
        "max_abs_diff_rel": diff,
        "allclose": bool(torch.allclose(mine, theirs_t, rtol=1e-3, atol=1e-4 * scale)),
    }

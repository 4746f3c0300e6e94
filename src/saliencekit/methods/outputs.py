"""What a model's output means, and the one rule every method, check and command reads it by.

A classifier returns one row per image, but the numbers can mean different things. The ``output``
option says which (docs/methods.md, "Model outputs"):

- ``"logits"``: exclusive classes. One column is a binary model's logit ``z`` (class 1 is ``z``, class 0
  is ``-z``, probability ``sigmoid(z)``, predicted ``z > 0``); ``K`` columns are the logits of ``K`` classes
  (probabilities by softmax, predicted by arg-max).
- ``"probabilities"``: exclusive classes whose probabilities the model returns itself (softmax output, or
  one sigmoid column for a binary model).
- ``"multilabel"``: ``L`` independent labels (e.g. 14 findings of CheXNet), one logit each: per-label
  ``sigmoid``, a label is positive when its probability is ``>= threshold``, never a softmax over labels.
- ``"multilabel_probabilities"``: independent labels whose sigmoid probabilities the model returns itself.
- ``"auto"`` (the default): a final ``nn.Sigmoid`` / ``nn.Softmax`` / ``nn.LogSoftmax`` module is looked
  for (a Sigmoid over several columns means independent labels, over one column a binary model); without
  one the output is read as logits.

**The explained score is a logit.** When the model's last operation is a Sigmoid, Softmax or LogSoftmax
module, it is *bypassed for the explanation* (like tf-keras-vis's ``ReplaceToLinear``) by a forward hook
that hands on the module's input, registered for the duration of the call and always removed: the model
itself is never changed. Gradients are then those of the logit, not of a saturated probability. When the
probabilities come from a function (``torch.sigmoid`` in ``forward``, a compiled model) and are declared
with ``output="probabilities"`` / ``"multilabel_probabilities"``, the explained score is their log-odds
``log(p) - log(1 - p)`` (``p`` clamped to ``[eps, 1 - eps]`` of its dtype): for a sigmoid output this *is*
the logit, so the maps equal those of the logit model wherever ``p`` is not rounded to 0 or 1.

Models that are not plain torch modules (a Keras model wrapped by saliencekit) expose their final activation
through a method ``saliencekit_final_activation()`` returning a :class:`FinalActivation` (or None).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
>>> rule = resolve_output(net, example=torch.zeros(1, 4))
>>> rule.multilabel, rule.activation.kind, rule.activation.name
(True, 'sigmoid', '1')
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saliencekit.errors import InputError, UnknownNameError

OUTPUTS = ("auto", "logits", "probabilities", "multilabel", "multilabel_probabilities")
MAX_TARGETS = 20  # the most classes one image is explained for in one call of the file/CLI layer (top-k, positives)
_ACTIVATIONS: dict[type[nn.Module], str] = {nn.Sigmoid: "sigmoid", nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax"}
_ACTIVATION_NAMES = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "log_softmax"}  # TorchScript names
_MODULE_NAMES = {"sigmoid": "nn.Sigmoid", "softmax": "nn.Softmax", "log_softmax": "nn.LogSoftmax"}


@dataclass(frozen=True)
class FinalActivation:
    """The model's last operation when it turns logits into (log-)probabilities.

    Attributes:
        kind: ``"sigmoid"``, ``"softmax"`` or ``"log_softmax"``.
        name: where it is: the module's name in the model (a Keras layer name for Keras models).
        bypass: a context manager factory; inside it the model returns the activation's *input* (its logits),
            and everything is as before on exit, also on error.
        columns: the number of model outputs (columns), when known.
    """

    kind: str
    name: str
    bypass: Callable[[], contextlib.AbstractContextManager[None]] = field(repr=False, compare=False)
    columns: int | None = None

    def describe(self) -> str:
        """E.g. ``nn.Sigmoid 'classifier.1'``."""
        return f"{_MODULE_NAMES.get(self.kind, self.kind)} {self.name!r}"


@dataclass(frozen=True)
class OutputRule:
    """How saliencekit reads the outputs of one model (see the module docstring).

    The tensors given to the methods of a rule are the outputs of the model *as explained*: with the final
    activation (if any) bypassed, i.e. logits, unless ``probabilities`` is set (nothing could be bypassed).

    Attributes:
        multilabel: independent labels (sigmoid per label, threshold) instead of exclusive classes.
        from_probabilities: the explained outputs are probabilities (the score explained is their log-odds).
        threshold: a label is positive when its probability is ``>= threshold`` (multi-label only).
        activation: the final activation module bypassed for the explanation, if any.
        declared: the ``output`` option this rule was resolved from.

    >>> rule = OutputRule(multilabel=True)
    >>> out = torch.tensor([[-0.3640, 2.0, -3.0]])   # sigmoid: 0.41, 0.88, 0.05
    >>> [round(p, 2) for p in rule.probabilities(out)[0].tolist()]
    [0.41, 0.88, 0.05]
    >>> rule.positives(out).tolist(), rule.predicted(out).tolist()
    ([[False, True, False]], [1])
    """

    multilabel: bool = False
    from_probabilities: bool = False
    threshold: float = 0.5
    activation: FinalActivation | None = None
    declared: str = "auto"

    # -- what the columns are -------------------------------------------------------------------

    def num_classes(self, output: torch.Tensor) -> int:
        """Classes (or labels) the output stands for: a single binary logit means 2 classes, one label 1."""
        k = as_rows(output).shape[1]
        return 2 if (k == 1 and not self.multilabel) else k

    def _binary(self, output: torch.Tensor) -> bool:
        return not self.multilabel and output.shape[1] == 1

    # -- probabilities and predictions -----------------------------------------------------------

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """Probability of every class (N, num_classes): per-label sigmoid for multi-label outputs, softmax for
        exclusive logits, ``[1 - p, p]`` for a single binary column; probabilities are returned as they are."""
        output = _float(as_rows(output))
        if self._binary(output):
            p = output[:, 0] if self.from_probabilities else torch.sigmoid(output[:, 0])
            return torch.stack([1 - p, p], dim=1)
        if self.from_probabilities:
            return output
        return torch.sigmoid(output) if self.multilabel else torch.softmax(output, dim=1)

    def class_probabilities(self, output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Probability of the given class per row (classes tiled over the row blocks of ``output``)."""
        output = as_rows(output)
        classes = tile(classes.to(output.device), output.shape[0])
        return self.probabilities(output).gather(1, classes[:, None])[:, 0]

    def predicted(self, output: torch.Tensor) -> torch.Tensor:
        """The predicted class per row (N,): ``z > 0`` (``p > 0.5``) for one binary column, else the most
        probable class; for multi-label outputs the most probable label (see :meth:`positives`)."""
        output = as_rows(output)
        if self._binary(output):
            return (output[:, 0] > (0.5 if self.from_probabilities else 0)).long()
        return output.argmax(dim=1)

    def positives(self, output: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) bool: labels whose probability is ``>= threshold`` (multi-label), else the one-hot
        predicted class."""
        output = as_rows(output)
        if self.multilabel:
            return self.probabilities(output) >= self.threshold
        pred = self.predicted(output)
        return torch.nn.functional.one_hot(pred, self.num_classes(output)).bool()

    def ranked(self, output: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` most probable classes per row (N, k), most probable first (per-label sigmoid for multi-label
        outputs, never a softmax over independent labels)."""
        probs = self.probabilities(output)
        return probs.argsort(dim=1, descending=True, stable=True)[:, :k]

    def default_targets(self, output: torch.Tensor, limit: int = MAX_TARGETS) -> tuple[list[list[int]], list[int]]:
        """The classes explained per image when none is asked for, and how many positive labels each image has.

        Exclusive classes: the predicted class. Multi-label: every positive label, most probable first, or the
        most probable label when none is positive; at most ``limit`` per image (the most probable ones).
        """
        output = as_rows(output)
        if not self.multilabel:
            return [[c] for c in self.predicted(output).tolist()], [1] * output.shape[0]
        probs = self.probabilities(output)
        pos = probs >= self.threshold
        order = probs.argsort(dim=1, descending=True, stable=True).cpu()
        targets, counts = [], []
        for i in range(output.shape[0]):
            n_pos = int(pos[i].sum())
            counts.append(n_pos)
            targets.append(order[i, : max(1, min(n_pos, limit))].tolist())
        return targets, counts

    # -- the explained score ------------------------------------------------------------------------

    def scores(self, output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The explained score ``S`` per row for given classes (tiled over the row blocks of ``output``): the
        logit (``+-z`` for one binary column), or the log-odds of the probability when the outputs are
        probabilities."""
        output = as_rows(output)
        classes = tile(classes.to(output.device), output.shape[0])
        if self._binary(output):
            z = output[:, 0]
            if self.from_probabilities:
                z = log_odds(z)
            return torch.where(classes == 1, z, -z)
        s = output.gather(1, classes[:, None])[:, 0]
        return log_odds(s) if self.from_probabilities else s

    # -- the model ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """While inside, the model returns the input of its final activation (nothing when there is none)."""
        if self.activation is None:
            yield
            return
        with self.activation.bypass():
            yield

    def describe(self) -> dict[str, Any]:
        """JSON-friendly: how the outputs were read (for summary.json and checks.json)."""
        d: dict[str, Any] = {
            "declared": self.declared,
            "kind": "multilabel" if self.multilabel else "classes",
            "model_returns": "probabilities" if (self.from_probabilities or self.activation is not None) else "logits",
            "final_activation": None if self.activation is None else {"kind": self.activation.kind,
                                                                      "name": self.activation.name,
                                                                      "bypassed": True},
            "explained_score": "log-odds of the probability" if self.from_probabilities else "logit",
            "probabilities": ("sigmoid per label" if self.multilabel else "softmax over classes (sigmoid for one "
                              "binary column)") if not self.from_probabilities else "as returned by the model",
        }
        if self.multilabel:
            d["threshold"] = self.threshold
        return d


def log_odds(p: torch.Tensor) -> torch.Tensor:
    """``log(p) - log(1 - p)`` with ``p`` clamped to ``[eps, 1 - eps]`` of its dtype (a probability rounded to
    0 or 1 keeps a finite score, and no gradient: only bypassing the activation module avoids that)."""
    eps = torch.finfo(p.dtype).eps if p.is_floating_point() else 1e-7
    q = p.clamp(eps, 1 - eps)
    return torch.log(q) - torch.log1p(-q)


def as_rows(output: object) -> torch.Tensor:
    """A model output as (N, K): (N,) becomes (N, 1); anything else but a tensor of that shape is an error."""
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model must return a tensor of logits, got {type(output).__name__}")
    if output.ndim == 1:
        return output[:, None]
    if output.ndim != 2:
        raise InputError(f"the model must return logits of shape (N, classes) or (N,), got {tuple(output.shape)}")
    return output


def tile(values: torch.Tensor, rows: int) -> torch.Tensor:
    """``values`` (n,) repeated over ``rows`` rows (``rows`` a multiple of ``n``: block-major passes)."""
    n = values.shape[0]
    if rows == n:
        return values
    if n == 0 or rows % n:
        raise InputError(f"cannot tile {n} targets over {rows} output rows")
    return values.repeat(rows // n)


def _float(output: torch.Tensor) -> torch.Tensor:
    return output if output.dtype == torch.float64 else output.float()


# -- finding the final activation ----------------------------------------------------------------------

_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], FinalActivation | None]] = (
    weakref.WeakKeyDictionary())
_BYPASSED: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _return_input(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return args[0]


def _module_bypass(module: nn.Module) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def bypass() -> Iterator[None]:
        depth = _BYPASSED.get(module, 0)
        handle = module.register_forward_hook(_return_input) if depth == 0 else None
        _BYPASSED[module] = depth + 1
        try:
            yield
        finally:
            _BYPASSED[module] -= 1
            if handle is not None:
                handle.remove()
                del _BYPASSED[module]

    return bypass


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    return [(name, m, _ACTIVATIONS[type(m)]) for name, m in model.named_modules()
            if name and type(m) in _ACTIVATIONS and getattr(m, "dim", None) in (None, 1, -1)]


def final_activation(model: nn.Module, example: torch.Tensor | None = None) -> FinalActivation | None:
    """The model's final Sigmoid / Softmax / LogSoftmax module, or None.

    A module counts only if the model returns its output (the same tensor, or a view of it such as a
    ``squeeze``): a Sigmoid inside a squeeze-and-excitation block does not. Finding it takes one forward pass
    of ``example[:1]`` (eval mode, no gradient, the model's own hooks set aside unless it fails without them),
    once per model, and only when the model has such modules at all. Models wrapped by saliencekit (Keras) answer
    through their ``saliencekit_final_activation()`` method. TorchScript models answer None (hooks cannot reach
    inside them).

    Raises:
        InputError: the model has such modules and no ``example`` was given.
    """
    own = getattr(model, "saliencekit_final_activation", None)
    if callable(own):
        return own()
    if isinstance(model, torch.jit.ScriptModule):
        return None
    cands = _candidates(model)
    if not cands:
        return None
    key = tuple(id(m) for _, m, _ in cands)
    memo = _FOUND.get(model)
    if memo is not None and memo[0] == key:
        return memo[1]
    if example is None:
        raise InputError("finding the model's final activation needs an example input")
    found = _probe(model, cands, example[:1].detach())
    _FOUND[model] = (key, found)
    return found


def _probe(model: nn.Module, cands: Sequence[tuple[str, nn.Module, str]], x: torch.Tensor) -> FinalActivation | None:
    """One forward pass (eval mode, no gradient) recording the candidates' outputs: the model's own hooks are set
    aside, unless the model fails without them (a hook that is part of its computation, e.g. a padding pre-hook)."""
    from saliencekit._layout import _hooks_set_aside
    from saliencekit.methods._capture import eval_mode

    seen: dict[str, torch.Tensor] = {}

    def run() -> Any:
        handles = []
        try:
            for name, m, _ in cands:
                def record(_m: nn.Module, _a: Any, out: Any, _name: str = name) -> None:
                    if isinstance(out, torch.Tensor):
                        seen[_name] = out
                handles.append(m.register_forward_hook(record))
            return model(x)
        finally:
            for h in handles:
                h.remove()

    with eval_mode(model), torch.no_grad():
        try:
            with _hooks_set_aside(model):
                out = run()
        except torch.OutOfMemoryError:
            raise
        except Exception:
            seen.clear()
            out = run()
    columns = as_rows(out).shape[1]
    for name, m, kind in reversed(cands):
        t = seen.get(name)
        if t is not None and (t is out or (t.numel() == out.numel() and t.numel() > 0 and t.dtype == out.dtype
                                           and t.data_ptr() == out.data_ptr())):
            return FinalActivation(kind, name, _module_bypass(m), columns)
    return None


def _compiled_final_kind(model: nn.Module) -> tuple[str, str] | None:
    """(kind, name) when a TorchScript model's last module is a Sigmoid/Softmax/LogSoftmax."""
    if not isinstance(model, torch.jit.ScriptModule):
        return None
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    if not leaves:
        return None
    name, last = leaves[-1]
    kind = _ACTIVATION_NAMES.get(getattr(last, "original_name", ""))
    return (kind, name) if kind is not None else None


# -- resolving the option ------------------------------------------------------------------------------

_DECLARED: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar("saliencekit_output", default=None)
_ACTIVE: contextvars.ContextVar[OutputRule | None] = contextvars.ContextVar("saliencekit_output_rule", default=None)


def check_output_option(output: object, threshold: object = 0.5) -> None:
    """Validate the ``output`` and ``threshold`` options.

    Raises:
        UnknownNameError: ``output`` is not one of :data:`OUTPUTS`.
        InputError: ``threshold`` is not a number strictly between 0 and 1.
    """
    if output not in OUTPUTS:
        raise UnknownNameError("model output", str(output), OUTPUTS)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < float(threshold) < 1 \
            or math.isnan(float(threshold)):
        raise InputError(f"threshold must be a probability strictly between 0 and 1, got {threshold!r}")


def resolve_output(model: nn.Module, output: str = "auto", threshold: float = 0.5,
                   example: torch.Tensor | None = None) -> OutputRule:
    """The :class:`OutputRule` of ``model`` for the declared ``output`` (see the module docstring).

    Args:
        model: the classifier (never modified; one probe forward pass when it has Sigmoid/Softmax modules).
        output: one of :data:`OUTPUTS`.
        threshold: probability at or above which a label is positive (multi-label outputs).
        example: an input batch (only its first image is used) for finding the final activation.

    Raises:
        UnknownNameError: an unknown ``output``.
        InputError: a bad threshold, or a declaration the model contradicts (e.g. ``"logits"`` for a model
            ending in ``nn.Softmax``, ``"multilabel"`` for one ending in a softmax).
    """
    check_output_option(output, threshold)
    act = final_activation(model, example)
    threshold = float(threshold)
    compiled = _compiled_final_kind(model)
    if compiled is not None and output == "auto":
        raise InputError(
            f"this TorchScript model's last module is {_MODULE_NAMES[compiled[0]]} ({compiled[1]!r}), which cannot be "
            "bypassed in a compiled model to explain its logit; declare what it returns: output='probabilities' (or "
            "'multilabel_probabilities' for independent labels; CLI --output) explains the log-odds of its "
            "probabilities, output='logits' reads it as logits; or load the model as an nn.Module")
    if act is None:
        return OutputRule(multilabel=output.startswith("multilabel"), threshold=threshold, declared=output,
                          from_probabilities=output in ("probabilities", "multilabel_probabilities"))
    where = f"the model ends in {act.describe()}"
    if output == "logits":
        raise InputError(f"output='logits' was declared, but {where}, so it returns probabilities; use output='auto' "
                         "(the activation is bypassed and its logit explained) or 'probabilities'")
    if act.kind == "sigmoid":
        columns = act.columns if act.columns is not None else _count_columns(model, example)
        if output == "probabilities" and columns > 1:
            raise InputError(f"output='probabilities' declares exclusive classes, but {where} over {columns} outputs, "
                             "i.e. independent labels; use output='multilabel' (or 'auto')")
        multilabel = output.startswith("multilabel") or (output == "auto" and columns > 1)
        return OutputRule(multilabel=multilabel, threshold=threshold, activation=act, declared=output)
    if output.startswith("multilabel"):
        raise InputError(f"output={output!r} declares independent labels, but {where}, which couples the classes "
                         "(their probabilities sum to 1); use output='auto' or 'probabilities'")
    return OutputRule(threshold=threshold, activation=act, declared=output)


def _count_columns(model: nn.Module, example: torch.Tensor | None) -> int:
    if example is None:
        raise InputError("finding the number of outputs needs an example input")
    from saliencekit.methods._capture import eval_mode

    with eval_mode(model), torch.no_grad():
        return as_rows(model(example[:1].detach())).shape[1]


def current_rule() -> OutputRule:
    """The rule of the model being explained (inside :func:`output_scope`), else the plain logits rule."""
    rule = _ACTIVE.get()
    return rule if rule is not None else _DEFAULT


_DEFAULT = OutputRule()


@contextlib.contextmanager
def output_scope(model: nn.Module, output: str | None = None, threshold: float | None = None,
                 example: torch.Tensor | None = None) -> Iterator[OutputRule]:
    """Explain ``model`` by its rule for the block: its final activation is bypassed (so every forward pass of
    ``model`` returns logits) and :func:`current_rule` is its rule.

    Args:
        model: the classifier (the bypass hook, if any, is always removed on exit).
        output: one of :data:`OUTPUTS`; None inherits the enclosing scope's declaration (default ``"auto"``).
        threshold: multi-label threshold; None inherits (default 0.5).
        example: an input batch for finding the final activation.
    """
    declared = _DECLARED.get() or ("auto", 0.5)
    output = declared[0] if output is None else output
    threshold = declared[1] if threshold is None else threshold
    rule = resolve_output(model, output, threshold, example)
    t_declared = _DECLARED.set((output, float(threshold)))
    t_active = _ACTIVE.set(rule)
    try:
        with rule.bypass():
            yield rule
    finally:
        _ACTIVE.reset(t_active)
        _DECLARED.reset(t_declared)


def model_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 64, output: str | None = None,
                  threshold: float | None = None, device: str | torch.device | None = None
                  ) -> tuple[torch.Tensor, OutputRule]:
    """The outputs (N, K) of ``model`` as saliencekit reads them (final activation bypassed), and its rule.

    Runs in eval mode under ``torch.inference_mode`` in chunks of ``batch_size`` images; every flag is restored.

    Args:
        model: the classifier (never modified).
        images: (N, C, H, W) inputs.
        batch_size: images per forward pass.
        output: see :func:`resolve_output` (None: the enclosing scope's declaration, by default ``"auto"``).
        threshold: multi-label threshold (None: inherited, by default 0.5).
        device: where to run the chunks (default: the images' device).
    """
    from saliencekit import _layout
    from saliencekit.methods._capture import eval_mode

    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if images.shape[0] == 0:
        raise InputError("no images to run the model on")
    outs = []
    first = images[:1] if device is None else images[:1].to(device)
    with output_scope(model, output, threshold, first) as rule, eval_mode(model), torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            out = _layout.forward(model, chunk if device is None else chunk.to(device))
            outs.append(as_rows(out))
    result = torch.cat(outs).detach().clone()
    warn_if_probabilities(result, rule)
    return result, rule


def warn_if_probabilities(output: torch.Tensor, rule: OutputRule) -> None:
    """Warn when outputs read as logits look like probabilities (``output='auto'``, no activation found)."""
    if rule.declared != "auto" or rule.activation is not None or rule.from_probabilities:
        return
    out = as_rows(output).detach()
    if out.shape[1] < 2 or not out.is_floating_point() or out.numel() == 0:
        return
    lo, hi = torch.aminmax(out)
    if float(lo) < 0 or float(hi) > 1:
        return
    sums = out.double().sum(1)
    if bool(((sums - 1).abs() < 1e-3).all()):
        looks = "softmax probabilities (every row sums to 1)"
        fix = "output='probabilities'"
    elif out.numel() >= 16:
        looks = "probabilities (every value is between 0 and 1)"
        fix = "output='multilabel_probabilities' (sigmoid per label) or 'probabilities'"
    else:
        return
    warnings.warn(f"the model's outputs look like {looks}, but it has no final Sigmoid/Softmax module, so they are "
                  f"read as logits; if its forward applies the activation as a function, declare {fix} (CLI --output) "
                  "so that they are read and explained correctly; declare output='logits' to silence this",
                  UserWarning, stacklevel=3)


__all__ = ["MAX_TARGETS", "OUTPUTS", "FinalActivation", "OutputRule", "check_output_option", "current_rule",
           "final_activation", "log_odds", "model_outputs", "output_scope", "resolve_output"]

"""The floor: the forward / backward passes a saliency method cannot avoid, timed in the same run.

Units (same model, same batch, same device as the methods):

- ``forward``: one forward pass under ``torch.inference_mode()``;
- ``forward_backward``: one forward pass and one backward pass to the input (``dS/dx``);
- ``forward_backward_layer``: one forward pass and a backward pass that stops at a layer
  (what a gradient CAM needs; for a late layer this is little more than a forward pass).

Multi-pass methods need a unit many times per image (Score-CAM: one masked forward per channel;
integrated gradients: one forward+backward per step; SmoothGrad: one per sample). Their floor is
``passes x (unit time per image at the best batch size) x images``, the best batch size being the
fastest per-image size among a few candidates, measured here too.

Timing: :class:`Interleaved` runs every entry once as warm-up, then ``repeats`` rounds in which
every entry is timed once (round-robin, the order rotated from round to round), so that a slow
spell of a shared machine hits all entries alike; reports keep every time, the minimum and the
median. On CUDA, each timed call is bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, with the device synchronised before and after; and its result."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


@dataclass
class Timing:
    """Every timed run of one entry (seconds) and its summary."""

    name: str
    times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def min(self) -> float:
        return min(self.times) if self.times else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"times_s": [round(t, 6) for t in self.times], "min_s": self.min, "median_s": self.median,
                "error": self.error}


class Interleaved:
    """Time several callables round-robin: one warm-up call each, then ``repeats`` rounds.

    The warm-up result of each entry is kept (``outputs``) for the agreement checks.

    >>> t = Interleaved(torch.device("cpu"))
    >>> t.add("noop", lambda: 1)
    >>> t.run(repeats=2)["noop"].times.__len__()
    2
    """

    def __init__(self, device: torch.device, log: Callable[[str], None] | None = None):
        self.device = device
        self.entries: dict[str, Callable[[], Any]] = {}
        self.outputs: dict[str, Any] = {}
        self.timings: dict[str, Timing] = {}
        self.log = log or (lambda _msg: None)

    def add(self, name: str, fn: Callable[[], Any]) -> None:
        if name in self.entries:
            raise ValueError(f"duplicate timing entry {name!r}")
        self.entries[name] = fn
        self.timings[name] = Timing(name)

    def run(self, repeats: int = 3, warmup: bool = True) -> dict[str, Timing]:
        """Warm every entry up (its failure is recorded, not raised), then time ``repeats`` rounds."""
        alive = []
        for name, fn in self.entries.items():
            if not warmup:
                alive.append(name)
                continue
            try:
                seconds, out = time_once(fn, self.device)
            except Exception as exc:  # a peer that cannot run this case is recorded, not fatal
                self.timings[name].error = f"{type(exc).__name__}: {exc}"[:500]
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # e.g. after an out-of-memory batch size
                self.log(f"  {name}: FAILED ({self.timings[name].error})")
                continue
            self.outputs[name] = out
            self.log(f"  warm-up {name}: {seconds:.3f} s")
            alive.append(name)
        for r in range(repeats):
            # Rotate the order each round so that no entry always runs right after the same neighbour
            # or at the same point of a round (a shared machine's load drifts within rounds too).
            shift = (r * max(1, len(alive) // max(1, repeats))) % max(1, len(alive))
            for name in alive[shift:] + alive[:shift]:
                seconds, _ = time_once(self.entries[name], self.device)
                self.timings[name].times.append(seconds)
            self.log(f"  round {r + 1}/{repeats} done")
        return self.timings


# ------------------------------------------------------------------------------------------ units


def fastest_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout the floor is measured in: channels-last on the CPU, as saliencekit runs it.

    The floor is the time of the passes a method cannot avoid, so it is measured in the fastest layout
    (for the lesson CNN channels-last is 2-3x faster per image on the CPU); the conversion is done once,
    outside the timed call.
    """
    if x.device.type == "cpu" and x.dim() == 4:
        return x.to(memory_format=torch.channels_last)
    return x


def forward_unit(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One forward pass of ``x`` under inference mode."""
    x = fastest_layout(x)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def forward_backward_unit(model: nn.Module, x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
                          ) -> Callable[[], torch.Tensor]:
    """One forward pass and one backward pass of ``score(output).sum()`` to the input (no parameter grads)."""
    params = [p for p in model.parameters() if p.requires_grad]
    x = fastest_layout(x)

    def run() -> torch.Tensor:
        for p in params:
            p.requires_grad_(False)
        try:
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(score(model(xx)).sum(), xx)
        finally:
            for p in params:
                p.requires_grad_(True)
        return g

    return run


def forward_backward_layer_unit(model: nn.Module, x: torch.Tensor, layer: nn.Module,
                                score: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """One forward pass and a backward pass of ``score(output).sum()`` down to ``layer``'s output only."""
    params = [p for p in model.parameters() if p.requires_grad]
    x = fastest_layout(x)

    def run() -> torch.Tensor:
        store: list[torch.Tensor] = []

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.detach().requires_grad_(True)  # cut the graph below the layer
            store.append(out)
            return out

        for p in params:
            p.requires_grad_(False)
        handle = layer.register_forward_hook(hook)
        try:
            out = model(x)
            (g,) = torch.autograd.grad(score(out).sum(), store[-1])
        finally:
            handle.remove()
            for p in params:
                p.requires_grad_(True)
        return g

    return run


def batch_candidates(n: int, max_images: int) -> list[int]:
    """Batch sizes to try for the best per-image time: ``n``, then doubling up to ``max_images``."""
    sizes = [n]
    while sizes[-1] * 2 <= max_images:
        sizes.append(sizes[-1] * 2)
    return sizes


@dataclass
class BestBatch:
    """Per-image time of a unit at each tried batch size, and the best of them."""

    unit: str
    per_image_s: dict[int, float]

    @property
    def best_size(self) -> int:
        return min(self.per_image_s, key=self.per_image_s.__getitem__)

    @property
    def best_per_image_s(self) -> float:
        return self.per_image_s[self.best_size]

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "per_image_s": {str(k): v for k, v in self.per_image_s.items()},
                "best_batch_size": self.best_size, "best_per_image_s": self.best_per_image_s}


def best_batch(
    unit: str,
    make: Callable[[torch.Tensor], Callable[[], Any]],
    example: torch.Tensor,
    sizes: Sequence[int],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> BestBatch:
    """Per-image seconds (minimum over ``repeats`` rounds, interleaved) of ``make(batch)()`` for each size.

    The batches are built by repeating ``example``'s images (their content does not change the time).
    """
    timer = Interleaved(device, log)
    for size in sizes:
        reps = -(-size // example.shape[0])
        batch = example.repeat(reps, 1, 1, 1)[:size].contiguous()
        timer.add(f"{unit}@{size}", make(batch))
    timings = timer.run(repeats)
    per_image = {}
    for size in sizes:
        t = timings[f"{unit}@{size}"]
        if t.times:
            per_image[size] = t.min / size
    if not per_image:
        raise RuntimeError(f"no batch size worked for the {unit} unit")
    return BestBatch(unit, per_image)


def multipass_floor(best: BestBatch, passes_per_image: float, images: int) -> float:
    """Seconds that ``passes_per_image`` units for each of ``images`` images cannot go below."""
    return best.best_per_image_s * passes_per_image * images

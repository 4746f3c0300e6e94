"""Chunked many-pass work: fixed sizes, the CPU chunk-size tuning, memory caps and OOM back-off.

The tuning decides from measured times, so these tests replace its clock with a fake one that each
chunk advances by a cost chosen by the test: the decisions are then exact and can be checked.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.methods import _batching
from saliencekit.methods._batching import max_batch_size, run_in_chunks


class FakeWork:
    """A chunk function that records its chunks and advances a fake clock by ``cost(size)`` per image."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, per_image: dict[int, float], oom_above: int | None = None):
        self.now = 0.0
        self.per_image = per_image
        self.oom_above = oom_above
        self.chunks: list[tuple[int, int]] = []
        monkeypatch.setattr(_batching, "_clock", lambda: self.now)

    def __call__(self, start: int, stop: int) -> None:
        size = stop - start
        if self.oom_above is not None and size > self.oom_above:
            raise torch.OutOfMemoryError("fake: chunk too large")
        self.chunks.append((start, stop))
        self.now += size * self.per_image.get(size, 1.0)

    def sizes(self) -> list[int]:
        return [b - a for a, b in self.chunks]

    def covers_once(self, total: int) -> bool:
        rows = [r for a, b in self.chunks for r in range(a, b)]
        return rows == list(range(total))


def small_example() -> tuple[nn.Module, torch.Tensor]:
    return nn.Linear(4, 1), torch.zeros(1, 1, 16, 16)


def test_fixed_size_runs_plain_chunks_in_order(monkeypatch):
    work = FakeWork(monkeypatch, {})
    model, example = small_example()
    assert run_in_chunks(work, 12, 5, model, example, backward=True) == 5
    assert work.chunks == [(0, 5), (5, 10), (10, 12)]


def test_cpu_auto_doubles_while_faster_then_keeps_the_fastest(monkeypatch):
    # Per-image cost falls until 16 images a chunk, then rises: 16 must be chosen.
    work = FakeWork(monkeypatch, {4: 10.0, 8: 6.0, 16: 5.0, 32: 6.0})
    model, example = small_example()
    best = run_in_chunks(work, 200, "auto", model, example, backward=True)
    assert best == 16
    assert work.sizes()[:4] == [4, 8, 16, 32]
    assert set(work.sizes()[4:-1]) == {16}
    assert work.covers_once(200)
    # A second call on the same model and shape starts at the settled size and does not tune again.
    again = FakeWork(monkeypatch, {4: 1.0, 8: 1.0, 16: 5.0, 32: 6.0})
    assert run_in_chunks(again, 64, "auto", model, example, backward=True) == 16
    assert again.sizes() == [16, 16, 16, 16]
    # The cache is per (shape, backward): a forward-only run tunes afresh.
    fresh = FakeWork(monkeypatch, {4: 2.0, 8: 3.0})
    assert run_in_chunks(fresh, 40, "auto", model, example, backward=False) == 4
    assert fresh.sizes()[:3] == [4, 8, 4]


def test_small_gains_do_not_count(monkeypatch):
    # 8 is 2% faster per image than 4: under the 5% threshold, so 4 stays.
    work = FakeWork(monkeypatch, {4: 10.0, 8: 9.8})
    model, example = small_example()
    assert run_in_chunks(work, 40, "auto", model, example, backward=True) == 4
    assert work.sizes() == [4, 8] + [4] * 7
    assert work.covers_once(40)


def test_unfinished_tuning_resumes_on_the_next_call(monkeypatch):
    work = FakeWork(monkeypatch, {4: 10.0, 8: 5.0, 16: 1.0})
    model, example = small_example()
    run_in_chunks(work, 6, "auto", model, example, backward=True)
    assert work.sizes() == [4, 2]  # the partial chunk of 2 is not a measurement
    nxt = FakeWork(monkeypatch, {4: 10.0, 8: 5.0, 16: 1.0, 32: 2.0})
    assert run_in_chunks(nxt, 100, "auto", model, example, backward=True) == 16
    assert nxt.sizes()[:3] == [8, 16, 32]
    assert nxt.covers_once(100)


def test_memory_cap_bounds_the_cpu_chunks(monkeypatch):
    # 64 MiB of input at 12 MiB per image: at most 5 images per chunk.
    model, example = nn.Linear(4, 1), torch.zeros(1, 3, 1024, 1024)
    assert max_batch_size(model, example, backward=True) == 5
    work = FakeWork(monkeypatch, {4: 10.0, 5: 1.0})
    assert run_in_chunks(work, 23, "auto", model, example, backward=True) == 5
    assert work.sizes() == [4, 5, 5, 5, 4]


def test_out_of_memory_halves_the_chunk_and_reruns_it(monkeypatch):
    work = FakeWork(monkeypatch, {4: 10.0, 8: 5.0, 16: 1.0}, oom_above=8)
    model, example = small_example()
    assert run_in_chunks(work, 50, "auto", model, example, backward=True) == 8
    assert work.sizes()[:3] == [4, 8, 8]
    assert work.covers_once(50)
    # A fixed size is the user's choice: the error propagates.
    fixed = FakeWork(monkeypatch, {}, oom_above=8)
    with pytest.raises(torch.OutOfMemoryError):
        run_in_chunks(fixed, 50, 16, nn.Linear(4, 1), example, backward=True)
    # One image that does not fit is not retried forever.
    hopeless = FakeWork(monkeypatch, {}, oom_above=0)
    with pytest.raises(torch.OutOfMemoryError):
        run_in_chunks(hopeless, 3, "auto", nn.Linear(4, 1), example, backward=True)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "scorecam", "occlusion"])
def test_automatic_chunks_give_the_same_maps_as_one_image_at_a_time(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1))
    x = torch.randn(3, 1, 12, 12)
    opts = {"smoothgrad": {"seed": 3}, "occlusion": {"patch": 4, "stride": 4}}.get(method, {})
    auto = sk.explain(model, x, {method: {**opts, "batch_size": "auto"}}, target=1, layer="2")[method]
    ones = sk.explain(model, x, {method: {**opts, "batch_size": 1}}, target=1, layer="2")[method]
    assert torch.allclose(auto.maps, ones.maps, rtol=1e-4, atol=1e-6 * ones.maps.abs().max().item())

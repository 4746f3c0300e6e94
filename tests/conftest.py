"""Shared test fixtures: device from SALIENCEKIT_TEST_DEVICE, seeded randomness, gpu marker."""

from __future__ import annotations

import os

import pytest
import torch

# Tests use tiny models, for which thread start-up and contention cost more than a second core gives.
torch.set_num_threads(1)


def _device() -> torch.device:
    name = os.environ.get("SALIENCEKIT_TEST_DEVICE", "cpu")
    return torch.device(name)


@pytest.fixture
def device() -> torch.device:
    """The device tests run on (``SALIENCEKIT_TEST_DEVICE``, default cpu)."""
    return _device()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

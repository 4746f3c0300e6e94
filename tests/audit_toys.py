"""A tiny dataset and trained run shared by the audit tests (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Cheap methods for store tests: one single-pass method and a seeded many-pass one.
METHODS = {"gradient": {"method": "gradient"}, "smoothgrad": {"method": "smoothgrad", "samples": 3}}


def shared_audit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, data folder): 8 images per class at 64 px with a shortcut marker, one training epoch."""
    base = tmp_path_factory.getbasetemp() / "audit_shared"
    run, data = base / "run", base / "data"
    if not (run / "checkpoint.pt").is_file():
        import shutil

        from saliencekit.data.synthetic import generate
        from saliencekit.train.fit import TrainConfig, train

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        generate(data, per_class=8, size=64, seed=0, shortcut=0.5, progress=False)
        train(data, run, TrainConfig(epochs=1, image_size=64, batch_size=8, device="cpu", seed=0), progress=False)
    return run, data

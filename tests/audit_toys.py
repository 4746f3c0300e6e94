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


def planted_store(out: Path, shortcut: bool = True, n_per_class: int = 60, size: int = 64, seed: int = 0,
                  with_images: bool = True) -> tuple[Path, list[int]]:
    """A store written without a model: hand-made maps whose structure is known.

    Class 1 ("effusion") maps are a broad blob at a lung base (left or right, varying in place and size);
    with ``shortcut``, the first third of them also carry a small bright spot near the top-right corner,
    like a marker a model might use. Class 0 ("normal") maps are broad blobs in the middle. Returns the
    store's folder and the store indices of the marked images. With ``with_images``, PNG images and shortcut
    masks are written in a data folder beside it so that the page can show examples and mask shares.
    """
    import numpy as np
    import torch
    from PIL import Image

    from saliencekit.audit._job import AuditContext, AuditJob, ChunkResult, encode_maps
    from saliencekit.audit.store import ChunkWriter, create_store, store_path
    from saliencekit.data.preprocess import Preprocessing

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    maps, labels, files, marked = [], [], [], []
    data = out.parent / f"{out.name}_data"
    for label, cls in enumerate(("normal", "effusion")):
        for i in range(n_per_class):
            if cls == "effusion":
                cx = rng.uniform(0.2, 0.35) if i % 2 else rng.uniform(0.65, 0.8)
                cy, s = rng.uniform(0.65, 0.8), rng.uniform(0.08, 0.14)
            else:
                cx, cy, s = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.1, 0.2)
            m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) + 0.05 * rng.random((size, size))
            spot = np.zeros((size, size), dtype=bool)
            if shortcut and cls == "effusion" and i < n_per_class // 3:
                r0, c0 = int(size * rng.uniform(0.03, 0.07)), int(size * rng.uniform(0.86, 0.9))
                spot[r0 : r0 + 4, c0 : c0 + 3] = True
                m = m + 20.0 * spot * m.max()
                marked.append(len(maps))
            maps.append(m.astype(np.float32))
            labels.append(label)
            files.append(f"{cls}/{cls}_{i:04d}.png")
            if with_images:
                img = (80 + 100 * m / m.max()).astype(np.uint8)
                img[spot] = 245
                (data / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(data / files[-1])
                (data / "shortcut_masks" / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.where(spot, 255, 0).astype(np.uint8)).save(data / "shortcut_masks" / files[-1])
    n = len(maps)
    job = AuditJob(model_source="planted", data_root=str(data), methods={"planted": {"method": "gradient",
                                                                                    "options": {}}},
                   chunk_size=16)
    labels_arr = np.array(labels, dtype=np.int64)
    ctx = AuditContext(job=job, model=torch.nn.Identity(), preprocessing=Preprocessing(size=(size, size)),
                       class_names=["normal", "effusion"], files=files, paths=[], labels=labels_arr, masks=[],
                       identity={"model": {"fingerprint": "planted", "class_names": ["normal", "effusion"],
                                           "preprocessing": Preprocessing(size=(size, size)).to_dict()},
                                 "data": {"n_images": n}},
                       info={"data_root": str(data), "model_source": "planted", "method_params": {}})
    path = store_path(out)
    create_store(path, ctx)
    writer = ChunkWriter(path)
    all_maps = np.stack(maps)
    for c in range(ctx.n_chunks):
        a, b = ctx.bounds(c)
        stored, scale = encode_maps(all_maps[a:b], "float16")
        preds = labels_arr[a:b].copy()
        preds[:2] = 1 - preds[:2]  # two errors per chunk
        probs = np.stack([1.0 - preds, preds], axis=1).astype(np.float32)
        writer.write(ChunkResult(chunk=c, maps={"planted": stored}, scales={"planted": scale}, predictions=preds,
                                 probabilities=probs, targets=labels_arr[a:b].copy()))
    return out, marked

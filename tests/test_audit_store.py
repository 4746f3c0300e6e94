"""The audit store: layout, numbers equal to explain(), lazy reads, refusal of other settings, resumption,
and a real ``kill -9`` of the command at several points followed by the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")

from audit_toys import METHODS, shared_audit_run
from saliencekit.audit import open_store, run_audit
from saliencekit.audit._job import chunk_seed, encode_maps
from saliencekit.audit.store import differing_files
from saliencekit.errors import DataError, InputError

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_audit_run(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(toy: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted audit (chunks of 5 images: the last chunk is partial)."""
    run, data = toy
    out = tmp_path_factory.mktemp("audit_ref")
    run_audit(run, data, out, METHODS, chunk_size=5, batch_size=8, device="cpu", workers=0, progress=False)
    return out


def test_store_layout_and_attributes(reference: Path) -> None:
    import zarr

    store = open_store(reference)
    assert store.complete and store.n_images == 16 and store.n_chunks == 4 and store.image_shape == (64, 64)
    assert store.methods == ["gradient", "smoothgrad"]
    assert store.class_names == ["normal", "effusion"]
    g = zarr.open_group(str(store.path), mode="r")
    for label in store.methods:
        raw = g[f"maps/{label}"]
        assert raw.shape == (16, 64, 64) and raw.dtype == np.float16 and raw.chunks == (5, 64, 64)
        assert [type(c).__name__ for c in raw.compressors] == ["ZstdCodec"]
        assert g[f"scales/{label}"].chunks == (5,)
    assert g["probabilities"].shape == (16, 2) and g["probabilities"].chunks == (5, 2)
    assert list(store.index[:]) == list(range(16))
    files = list(store.files[:])
    assert files[:8] == [f"normal/normal_{i:04d}.png" for i in range(8)]
    assert files[8:] == [f"effusion/effusion_{i:04d}.png" for i in range(8)]
    assert list(store.labels[:]) == [0] * 8 + [1] * 8
    ident = store.identity
    assert ident["dtype"] == "float16" and ident["chunk_size"] == 5 and ident["batch_size"] == 8
    assert len(ident["model"]["fingerprint"]) == 64 and ident["data"]["n_images"] == 16
    assert store.info["method_params"]["smoothgrad"]["samples"] == 3
    # nothing in the store depends on when or where it was written
    text = "".join(p.read_text() for p in store.path.rglob("zarr.json"))
    assert str(reference) not in text and "time" not in store.info


def test_maps_predictions_equal_explain(toy: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    """The stored numbers are the model's outputs and explain()'s maps of each chunk (float16: to 11 bits)."""
    import saliencekit as sk
    from saliencekit.predict import logits_to_proba
    from saliencekit.run import load_run

    run_dir, data = toy
    run = load_run(run_dir, data=data)
    store = open_store(reference)
    paths = [Path(data) / f for f in store.files[:]]
    x = torch.stack([run.preprocessing.load(p) for p in paths])
    with torch.no_grad():
        logits = run.model(x)
    np.testing.assert_allclose(store.probabilities[:], logits_to_proba(logits).numpy(), rtol=1e-5, atol=1e-6)
    pred = (logits[:, 0] > 0).long().numpy() if logits.shape[1] == 1 else logits.argmax(1).numpy()
    assert list(store.predictions[:]) == list(pred) and list(store.targets[:]) == list(pred)
    for c in range(store.n_chunks):
        a, b = store.chunk_bounds(c)
        methods = {"gradient": {"method": "gradient"},
                   "smoothgrad": {"method": "smoothgrad", "samples": 3, "seed": chunk_seed(0, c), "batch_size": 8}}
        want = sk.explain(run.model, x[a:b], methods, target=torch.as_tensor(pred[a:b]))
        for label in methods:
            got = store.maps[label][a:b]
            ref = want[label].maps.numpy()
            scale = np.abs(ref).reshape(b - a, -1).max(1)[:, None, None]
            assert np.all(np.abs(got - ref) <= 2.0**-11 * scale + 1e-30), (label, c)
    # float32 stores hold explain()'s values exactly
    out = run_audit(run_dir, data, tmp_path / "f32", {"gradient": {"method": "gradient"}}, dtype="float32",
                    chunk_size=16, device="cpu", workers=0, progress=False)
    want = sk.explain(run.model, x, ["gradient"], target=torch.as_tensor(pred))["gradient"].maps.numpy()
    assert np.array_equal(open_store(out.out).maps["gradient"][:], want)


def test_seeds_depend_on_the_chunk_only(reference: Path) -> None:
    store = open_store(reference)
    maps = store.maps["smoothgrad"]
    # different chunks get different noise: the same seed everywhere would be a silent correlation
    assert chunk_seed(0, 0) != chunk_seed(0, 1)
    assert not np.array_equal(maps[0:5], maps[5:10])


def test_lazy_reads(reference: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(open_store(reference).path, copy)
    (copy / "maps" / "gradient" / "c" / "0" / "0" / "0").unlink()  # chunk 0 of the gradient maps is gone
    store, full = open_store(copy), open_store(reference)
    assert np.array_equal(store.maps["gradient"][5:10], full.maps["gradient"][5:10])  # chunk 0 not needed
    assert np.array_equal(store.maps["gradient"][[6, 12], 3], full.maps["gradient"][[6, 12], 3])
    assert store.maps["gradient"][7].shape == (64, 64) and store.maps["gradient"][7, 2:4, 5].shape == (2,)
    assert store.maps["gradient"][3].max() == 0  # the missing chunk reads as the fill value, only when asked for


def test_encode_maps_keeps_tiny_and_huge_values() -> None:
    rng = np.random.default_rng(0)
    m = np.stack([rng.normal(size=(8, 8)) * s for s in (1e-12, 1e-3, 1.0, 1e6)]).astype(np.float32)
    m[0, 0, 0] = 0.0
    stored, scale = encode_maps(m, "float16")
    assert stored.dtype == np.float16 and np.isfinite(stored).all()
    back = stored.astype(np.float32) * scale[:, None, None]
    for i in range(4):
        top = np.abs(m[i]).max()
        assert np.abs(back[i] - m[i]).max() <= 2.0**-11 * top
        assert np.log2(scale[i]) == np.round(np.log2(scale[i]))  # powers of two: the scaling is exact
    zeros, s0 = encode_maps(np.zeros((1, 2, 2), np.float32), "float16")
    assert s0[0] == 1 and not zeros.any()
    same, s1 = encode_maps(m, "float32")
    assert np.array_equal(same, m) and (s1 == 1).all()


def test_other_settings_are_refused(toy: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    import shutil

    run, data = toy
    kw = {"chunk_size": 5, "batch_size": 8, "device": "cpu", "workers": 0, "progress": False}
    with pytest.raises(InputError, match=r"methods: gradient, smoothgrad stored, gradient now.*--overwrite"):
        run_audit(run, data, reference, ["gradient"], **kw)
    with pytest.raises(InputError, match=r"method options of smoothgrad \(smoothgrad\(samples=3\) stored"):
        run_audit(run, data, reference, {**METHODS, "smoothgrad": {"method": "smoothgrad", "samples": 4}}, **kw)
    with pytest.raises(InputError, match=r"dtype: 'float16' stored, 'float32' now"):
        run_audit(run, data, reference, METHODS, **kw, dtype="float32")
    with pytest.raises(InputError, match=r"chunk_size: 5 stored, 4 now"):
        run_audit(run, data, reference, METHODS, **{**kw, "chunk_size": 4})
    with pytest.raises(InputError, match=r"target: 'predicted' stored, 'label' now"):
        run_audit(run, data, reference, METHODS, **kw, target="label")
    # other weights
    other_run = tmp_path / "run2"
    shutil.copytree(run, other_run)
    ckpt = torch.load(other_run / "checkpoint.pt", weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1e-3
    torch.save(ckpt, other_run / "checkpoint.pt")
    with pytest.raises(InputError, match=r"model: weights \(fingerprint"):
        run_audit(other_run, data, reference, METHODS, **kw)
    # other data
    other_data = tmp_path / "data2"
    shutil.copytree(data, other_data)
    (other_data / "normal" / "normal_0000.png").unlink()
    with pytest.raises(InputError, match=r"data: 16 images stored, 15 now"):
        run_audit(run, other_data, reference, METHODS, **kw)
    assert open_store(reference).complete  # nothing was touched
    # --overwrite starts again
    copy = tmp_path / "ow"
    shutil.copytree(reference, copy)
    res = run_audit(run, other_data, copy, ["gradient"], **kw, overwrite=True)
    assert open_store(copy).n_images == 15 and len(res.computed) == 3


def test_bad_inputs_name_the_problem(toy: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = toy
    kw = {"device": "cpu", "workers": 0, "progress": False}
    with pytest.raises(DataError, match="data folder not found"):
        run_audit(run, tmp_path / "nope", tmp_path / "a", ["gradient"], **kw)
    odd = tmp_path / "odd"
    (odd / "cats").mkdir(parents=True)
    (odd / "cats" / "a.png").write_bytes((Path(data) / "normal" / "normal_0000.png").read_bytes())
    with pytest.raises(InputError, match=r"class folder\(s\) \['cats'\].*not classes of the model"):
        run_audit(run, odd, tmp_path / "b", ["gradient"], **kw)
    with pytest.raises(InputError, match="unknown target 'cat'"):
        run_audit(run, data, tmp_path / "c", ["gradient"], **kw, target="cat")
    with pytest.raises(InputError, match="has no option"):
        run_audit(run, data, tmp_path / "d", {"g": {"method": "gradient", "samples": 3}}, **kw)
    with pytest.raises(InputError, match="batch_size must be an integer"):
        run_audit(run, data, tmp_path / "e", {"s": {"method": "smoothgrad", "batch_size": "auto"}}, **kw)
    assert not (tmp_path / "b" / "maps.zarr").exists() and not (tmp_path / "c" / "maps.zarr").exists()


def test_resume_computes_only_missing_chunks(toy: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    import shutil

    import zarr

    run, data = toy
    copy = tmp_path / "resume"
    shutil.copytree(reference, copy)
    g = zarr.open_group(str(copy / "maps.zarr"), mode="r+")
    g["done"][2] = 0
    shutil.rmtree(copy / "maps.zarr" / "maps" / "smoothgrad" / "c" / "2")
    (copy / "maps.zarr" / "maps" / "gradient.x.partial").write_bytes(b"left by a killed writer")
    res = run_audit(run, data, copy, METHODS, chunk_size=5, batch_size=8, device="cpu", workers=2, progress=False)
    assert sorted(res.computed) == [2] and res.already_done == 3
    assert differing_files(open_store(reference).path, copy / "maps.zarr") == []
    again = run_audit(run, data, copy, METHODS, chunk_size=5, batch_size=8, device="cpu", workers=0, progress=False)
    assert again.computed == {} and "already complete" in again.summary()


def _count_done(store: Path) -> int:
    d = store / "done" / "c"
    return len(list(d.iterdir())) if d.is_dir() else 0


def test_kill_9_then_the_same_command_gives_the_identical_store(toy: tuple[Path, Path], tmp_path: Path) -> None:
    """The real thing: the CLI in a subprocess, SIGKILLed at several points, then the same command again."""
    run, data = toy
    # 64 noisy copies per image make each chunk of 2 images take a visible moment, so kills land mid-job
    args = ["audit", str(run), str(data), "--out", str(tmp_path / "killed"), "--methods", "gradient",
            "--method-options", "sg=smoothgrad:samples=64", "--chunk-size", "2", "--batch-size", "16",
            "--device", "cpu", "--no-analysis", "--quiet", "--workers", "1"]
    cmd = [sys.executable, "-m", "saliencekit", *args]
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    store = tmp_path / "killed" / "maps.zarr"
    n_chunks = 8
    kills = []
    # before or while creating the store, then after 2 and 5 of the 8 chunks: each launch costs a torch import
    # (most of this test's time), so three kills, each with at least three chunks still to do
    for when in ("start", 2, 5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        if when == "start":
            while not store.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            while _count_done(store) < when and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        kills.append((when, alive, _count_done(store)))
    assert all(alive for _, alive, _ in kills), kills  # three real kills mid-job
    assert any(done < n_chunks for _, _, done in kills[1:])
    finish = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert "images/s" in finish.stdout or "already complete" in finish.stdout
    # the uninterrupted run, in this process (one torch thread here, the default count in the subprocesses)
    ref = run_audit(run, data, tmp_path / "ref", {"gradient": {"method": "gradient"},
                                                  "sg": {"method": "smoothgrad", "samples": 64}},
                    chunk_size=2, batch_size=16, device="cpu", workers=0, progress=False)
    assert open_store(store).complete
    assert differing_files(ref.store, store) == []
    assert not list(tmp_path.glob("killed/.maps.zarr.tmp-*"))


def test_a_second_writer_is_refused(toy: tuple[Path, Path], tmp_path: Path) -> None:
    from saliencekit.audit.store import writer_lock

    run, data = toy
    with writer_lock(tmp_path / "maps.zarr"), pytest.raises(InputError, match="another audit is writing"):
        run_audit(run, data, tmp_path, ["gradient"], device="cpu", workers=0, progress=False)
    assert not (tmp_path / "maps.zarr").exists()


def test_a_forked_child_does_not_keep_the_writer_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked while the lock is held; once the writer is gone they must not hold it."""
    from saliencekit.audit.store import writer_lock

    store = tmp_path / "maps.zarr"
    with writer_lock(store):
        pid = os.fork()
        if pid == 0:  # the 'worker': outlives its parent's lock for a while
            time.sleep(20)
            os._exit(0)
    try:
        probe = ("import sys; from saliencekit.audit.store import writer_lock\n"
                 f"with writer_lock({str(store)!r}): print('got it')")
        got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert got.returncode == 0 and "got it" in got.stdout, got.stderr
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

"""The Ray engine on a local two-CPU Ray instance (one per module: Ray starts slowly): the same store as the
local engine, bit for bit; a worker killed with SIGKILL mid-job, and the job still completes with every chunk
written exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")
ray = pytest.importorskip("ray", reason="the Ray engine needs Ray (pip install saliencekit[ray])")

from audit_toys import METHODS, shared_audit_run  # noqa: E402
from saliencekit.audit import open_store, run_audit  # noqa: E402
from saliencekit.audit.store import differing_files  # noqa: E402
from saliencekit.errors import InputError  # noqa: E402

KW = {"chunk_size": 2, "batch_size": 8, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def local_ray() -> object:
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # e.g. "node timed out during startup" on an overloaded machine: not an audit bug
        ray.shutdown()
        pytest.skip(f"a local Ray instance does not start here: {str(exc).splitlines()[0]}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    run, data = shared_audit_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("ray_ref")
    run_audit(run, data, out, METHODS, **KW, workers=0)
    return run, data, out / "maps.zarr"


def test_two_ray_workers_write_the_local_engines_store(local_ray: object, toy_and_reference: tuple[Path, Path, Path],
                                                       tmp_path: Path) -> None:
    run, data, ref = toy_and_reference
    seen: list[tuple[int, str, int]] = []
    res = run_audit(run, data, tmp_path, METHODS, **KW, engine="ray", ray_workers=2,
                    on_chunk=lambda c, w, pid: seen.append((c, w, pid)))
    assert sorted(res.computed) == list(range(8)) and res.retried == []
    assert {w for _, w, _ in seen} == {"ray-worker-0", "ray-worker-1"}  # both actors wrote chunks
    assert len({pid for _, _, pid in seen} | {os.getpid()}) == 3  # in two other processes
    assert differing_files(ref, tmp_path / "maps.zarr") == []


def test_a_killed_worker_chunks_are_redone_exactly_once(local_ray: object, toy_and_reference: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    run, data, ref = toy_and_reference
    killed: list[int] = []
    completions: list[int] = []

    def on_chunk(c: int, worker: str, pid: int) -> None:
        completions.append(c)
        if not killed and worker == "ray-worker-0":  # right after its first chunk, while it holds another one
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    res = run_audit(run, data, tmp_path, METHODS, **KW, engine="ray", ray_workers=2, on_chunk=on_chunk)
    assert killed
    assert sorted(completions) == list(range(8))  # every chunk reported done exactly once
    assert sorted(res.computed) == list(range(8)) and len(res.retried) >= 1
    assert "ray-worker-2" in set(res.computed.values()) or "ray-worker-1" in set(res.computed.values())
    assert open_store(tmp_path).complete
    assert differing_files(ref, tmp_path / "maps.zarr") == []
    assert "retried after a worker died" in res.summary()


def test_worker_errors_reach_the_driver_as_one_line(local_ray: object, toy_and_reference: tuple[Path, Path, Path],
                                                    tmp_path: Path) -> None:
    run, data, _ = toy_and_reference
    bad = tmp_path / "data"
    import shutil

    shutil.copytree(data, bad)
    (bad / "effusion" / "effusion_0003.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match=r"cannot read image .*effusion_0003.png") as info:
        run_audit(run, bad, tmp_path / "out", {"gradient": {"method": "gradient"}}, **KW, engine="ray", ray_workers=1)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="no GPU"):
        run_audit(run, data, tmp_path / "gpu", ["gradient"], **{**KW, "device": "cuda"}, engine="ray")

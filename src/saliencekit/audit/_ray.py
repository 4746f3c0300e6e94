"""The Ray engine: one model-holding actor per GPU (or per CPU group), each writing its own chunks.

The driver (the process that called :func:`saliencekit.audit.run_audit`) creates the store, then hands
chunk numbers to the actors, at most two outstanding per actor. An actor loads the model and indexes
the data itself (the model and data paths must be readable on every node, and the store's folder
writable: a shared file system), checks that it sees the same model and data as the driver (the same
identity), computes each chunk with the same code as the local engine and writes it straight into the
store. Chunks never share a file, so actors never write the same file.

When an actor dies (its process or its node is lost), the chunks it held go back to the queue and a new
actor takes its place; a chunk is counted done once, when an actor returns it. An exception raised by the
computation itself (a corrupt image, a bad option) stops the job with that exception.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from saliencekit.audit._job import AuditContext, AuditJob, compute_chunk, load_context, load_images
from saliencekit.audit.store import ChunkWriter
from saliencekit.errors import InputError, SaliencekitError

_IN_FLIGHT = 2  # chunks handed to an actor at a time: the next one is queued while one computes


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install saliencekit[ray]") from None
    return ray


class _Worker:
    """The actor: one model, one writer, chunks on request."""

    def __init__(self, job: dict[str, Any], identity: dict[str, Any], store: str, threads: int):
        import torch

        # A user-level problem (the model or data path unreadable on this node, other contents) is kept and
        # raised by the first task, so that the driver gets its one-line message instead of a dead actor.
        self.error: SaliencekitError | None = None
        torch.set_num_threads(max(1, threads))
        spec = AuditJob.from_dict(job)
        if spec.device.startswith("cuda"):
            spec = replace(spec, device="cuda")  # Ray makes the actor's own GPU(s) visible, the first is ours
        try:
            self.ctx: AuditContext = load_context(spec)
            if self.ctx.identity != identity:
                from saliencekit.audit.store import differences

                raise InputError(f"the Ray worker on {os.uname().nodename} sees another model or other data than "
                                 f"the driver ({'; '.join(differences(identity, self.ctx.identity))}); every node "
                                 "must read the same model and data paths (a shared file system)")
            self.writer = ChunkWriter(store)
        except SaliencekitError as exc:
            self.error = exc

    def process(self, chunk: int) -> tuple[int, int]:
        """Compute and write ``chunk``; return it with this process's id."""
        if self.error is not None:
            raise self.error
        self.writer.write(compute_chunk(self.ctx, chunk, load_images(self.ctx, chunk)))
        return chunk, os.getpid()


def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside a Ray task error (its message stays one line)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_ray(
    ctx: AuditContext,
    store: str,
    chunks: Sequence[int],
    *,
    address: str | None = None,
    n_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    on_chunk: Callable[[int, str, int], None] | None = None,
    max_replacements: int | None = None,
) -> tuple[dict[int, str], list[int]]:
    """Compute ``chunks`` on Ray actors.

    Args:
        ctx: the job, loaded by the driver (for its identity and the chunk bounds).
        store: the store's path (the same path on every node).
        chunks: the chunks to compute.
        address: the cluster to join (None: the Ray instance this process joined, else a new local one).
        n_workers: actors (default: one per GPU for a CUDA job, else one per ``cpus_per_worker`` CPUs).
        cpus_per_worker: CPUs per actor (also its torch threads).
        gpus_per_worker: GPUs per actor (default 1 for a CUDA job, else 0).
        on_chunk: called with (chunk, worker name, worker pid) after each chunk is done.
        max_replacements: actors started to replace dead ones before giving up (default ``2 * n_workers + 2``).

    Returns:
        chunk -> name of the worker that wrote it, and the chunks that were handed out again after their
        worker died.
    """
    ray = _ray()
    from ray.exceptions import RayActorError, RayTaskError

    cuda = ctx.job.device.startswith("cuda")
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, plain Exception...
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            raise SaliencekitError(f"cannot {where}: {first}") from exc
        started = True
    actors: dict[str, Any] = {}
    try:
        resources = ray.cluster_resources()
        gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if cuda else 0.0)
        if cuda and resources.get("GPU", 0) < max(gpus, 1e-9):
            raise InputError(f"device {ctx.job.device!r} but the Ray cluster has no GPU (resources: "
                             f"{ {k: v for k, v in resources.items() if k in ('CPU', 'GPU')} }); use --device cpu")
        if n_workers is None:
            n_workers = int(resources.get("GPU", 0) // gpus) if cuda and gpus > 0 else int(
                resources.get("CPU", 1) // cpus_per_worker)
        n_workers = max(1, min(int(n_workers), len(chunks))) if chunks else 0
        if max_replacements is None:
            max_replacements = 2 * n_workers + 2
        actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=0)(_Worker)
        job, identity, threads = ctx.job.to_dict(), ctx.identity, max(1, int(cpus_per_worker))
        started_workers = 0

        def start() -> str:
            nonlocal started_workers
            name = f"ray-worker-{started_workers}"
            started_workers += 1
            actors[name] = actor_cls.options(name=None).remote(job, identity, store, threads)
            return name

        for _ in range(n_workers):
            start()
        queue = deque(chunks)
        inflight: dict[Any, tuple[int, str]] = {}
        load = dict.fromkeys(actors, 0)
        computed: dict[int, str] = {}
        retried: list[int] = []
        replacements = 0
        while queue or inflight:
            for name in list(actors):
                while queue and load.get(name, 0) < _IN_FLIGHT:
                    c = queue.popleft()
                    inflight[actors[name].process.remote(c)] = (c, name)
                    load[name] = load.get(name, 0) + 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                c, name = inflight.pop(ref)
                load[name] = load.get(name, 1) - 1
                try:
                    chunk, pid = ray.get(ref)
                except RayActorError as exc:  # the actor (or its node) is gone: hand its chunk out again
                    if getattr(exc, "actor_init_failed", False):
                        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                        raise SaliencekitError(f"a Ray worker could not start: {first}") from exc
                    retried.append(c)
                    queue.appendleft(c)
                    if name in actors:
                        ray.kill(actors.pop(name), no_restart=True)
                        load.pop(name, None)
                        if replacements >= max_replacements:
                            raise SaliencekitError(f"Ray workers died {replacements + 1} times; giving up (last: "
                                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                                                   ) from exc
                        replacements += 1
                        load[start()] = 0
                    continue
                except RayTaskError as exc:
                    raise _cause(exc) from None
                if chunk in computed:  # pragma: no cover - the bookkeeping above makes this impossible
                    raise RuntimeError(f"chunk {chunk} was completed twice ({computed[chunk]} and {name})")
                computed[chunk] = name
                if on_chunk is not None:
                    on_chunk(chunk, name, pid)
        return computed, retried
    finally:
        for handle in actors.values():
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
        if started:
            ray.shutdown()

"""Where jobs execute: in this process (serial) or as one Ray task each. The only module that imports Ray.

Both backends run the same worker shim, :func:`execute_job`, and hand back :class:`Outcome` objects:

* ``ok``: the executor returned ``{output name: content}``;
* ``error``: the executor raised (recorded with its own traceback; not retried: it would fail the same way);
* ``system``: the worker died (SIGKILL, OOM killer, lost node) or its result was lost; the runner retries;
* ``cancelled``: the job was interrupted (Ctrl-C reached it); the runner stops the run;
* ``oom``: the executor ran out of accelerator memory (``torch.OutOfMemoryError``); the runner splits the
  pack or retries the job with less memory (:mod:`pipelines.runner`).

Ray is imported lazily, inside the functions of this module, so the serial backend (``address="local"``),
planning and status work on a machine without Ray. Ray's own retries are off (``max_retries=0``): the
runner retries, so that attempt counts are exact and every retry is logged.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback as _tb
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipelines.jobs import Job, JobContext, resolve_executor
# local Ray instances of killed drivers are recorded and stopped by proof (PID + start time), never by
# matching command lines: see ray_leftovers.py (re-exported: the runner and the CLI import them from here)
from pipelines.ray_leftovers import SESSION_FILE, forget_local_session, reap_stale_session, record_local_session

__all__ = ["LOCAL", "OOM_ERROR", "Outcome", "RayUnavailable", "SerialBackend", "RayBackend", "SESSION_FILE",
           "check_address", "ensure_ray", "execute_job", "forget_local_session", "gpu_total_memory", "is_oom",
           "one_line", "ray_is_initialized", "reap_stale_session", "record_local_session", "shutdown_ray"]

LOG = logging.getLogger("pipelines.backends")
LOCAL = "local"
ERROR_CHARS = 500


class RayUnavailable(RuntimeError):
    """Ray cannot be started or joined; the message is one line, fit for the CLI."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return msg if len(msg) <= ERROR_CHARS else msg[: ERROR_CHARS - 3] + "..."


OOM_ERROR = "OutOfMemoryError"  # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (by name: this module never imports torch)."""
    return any(cls.__name__ == OOM_ERROR for cls in type(exc).__mro__)


def _release_accelerator_memory() -> None:
    """Return the cached blocks of a failed job to the device (serial backend: the next job runs here)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Outcome:
    kind: str  # ok | error | system | cancelled | oom
    outputs: dict | None = None
    error: str = ""
    traceback: str = ""
    where: str = ""
    seconds: float = 0.0


def execute_job(executor: str | Callable, spec_json: str, ctx: JobContext, *blobs: bytes) -> Outcome:
    """Run one executor where the task landed; never raises for executor errors or interrupts.

    Catching here (instead of letting Ray wrap the exception) keeps the recorded traceback the
    executor's own and makes "application error" unambiguous: anything Ray raises is a system failure.
    """
    t0 = time.perf_counter()
    where = f"{socket.gethostname()} pid {os.getpid()}"
    try:
        fn = resolve_executor(executor)
        result = fn(json.loads(spec_json), dict(zip(ctx.inputs, blobs)), ctx)
        if not isinstance(result, Mapping):
            raise TypeError(f"executor returned {type(result).__name__}; expected a dict of output name -> content")
        return Outcome("ok", outputs=dict(result), where=where, seconds=time.perf_counter() - t0)
    except KeyboardInterrupt:
        return Outcome("cancelled", error="interrupted", where=where, seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - every executor error is recorded, not raised
        out = Outcome("oom" if is_oom(exc) else "error", error=one_line(exc), traceback=_tb.format_exc(),
                      where=where, seconds=time.perf_counter() - t0)
    if out.kind == "oom":  # after the except block: its traceback (and the job's tensors) are gone
        _release_accelerator_memory()
    return out


@contextlib.contextmanager
def _interruptible() -> Any:
    """Let Ctrl-C raise KeyboardInterrupt inside an in-process executor even while the runner's own
    SIGINT handler (stop submitting, finish gracefully) is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def gpu_total_memory() -> float:
    """Bytes of memory of this process's first visible GPU; 0 without one (or without torch).

    Runs where jobs run (a Ray task on each GPU node, or the serial backend's process): the driver may
    have no GPU, and a cluster's nodes may carry different cards."""
    try:
        import torch
    except ImportError:
        return 0.0
    if not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.get_device_properties(0).total_memory)


class SerialBackend:
    """Runs each submitted job in this process, one at a time, when it is awaited."""

    name = "serial"

    def device_memory(self) -> float:
        """This process's GPU memory in bytes (0: none): what a pack of GPU jobs may fill."""
        return gpu_total_memory()

    def __init__(self) -> None:
        self._queue: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._next = 0

    def default_window(self) -> int:
        return 1

    def infeasible(self, job: Job) -> str | None:
        return None

    def put(self, data: bytes) -> bytes:
        return data

    def submit(self, job: Job, executor: str | Callable, handles: list, attempt: int) -> int:
        self._next += 1
        self._queue[self._next] = (executor, job.spec_json, JobContext.of(job, attempt), handles)
        return self._next

    def wait(self, handles: list, timeout: float | None = None) -> list[tuple[Any, Outcome]]:
        """Run the first awaited job to its end. ``timeout=0`` polls: a serial job never finishes unawaited."""
        if timeout == 0:
            return []
        h = handles[0]
        executor, spec_json, ctx, blobs = self._queue.pop(h)
        with _interruptible():
            return [(h, execute_job(executor, spec_json, ctx, *blobs))]

    def cancel(self, handles: list) -> None:
        for h in handles:
            self._queue.pop(h, None)


class RayBackend:
    """One Ray task per job; ``ray.wait`` hands back whichever finish first."""

    name = "ray"

    def __init__(self, *, check_feasible: bool) -> None:
        import ray

        self._ray = ray
        # max_calls can only be set on the decorator, hence two remote functions. GPU tasks get a fresh
        # worker process each, so CUDA memory is returned to the device when the job ends.
        self._cpu_fn = ray.remote(max_retries=0, retry_exceptions=False)(execute_job)
        self._gpu_fn = ray.remote(max_retries=0, retry_exceptions=False, max_calls=1)(execute_job)
        self._check_feasible = check_feasible
        self._node_max: dict[str, float] | None = None

    def infeasible(self, job: Job) -> str | None:
        """Why no node of a fixed-size (local) instance can ever run ``job``, or None.

        Without this a GPU job on a CPU-only machine would wait forever. Not applied when joining a
        cluster, whose autoscaler may add the missing nodes.
        """
        if not self._check_feasible:
            return None
        if self._node_max is None:
            nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
            self._node_max = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
        for key, need in (("CPU", job.num_cpus), ("GPU", job.num_gpus)):
            if need > self._node_max[key]:
                return (f"needs {need:g} {key}(s) but no node of this Ray instance has more than "
                        f"{self._node_max[key]:g}; lower ray.{key.lower()}s_per_job or join a cluster that has them")
        return None

    def device_memory(self, timeout: float = 120.0) -> float:
        """The smallest GPU memory over the alive GPU nodes, in bytes (0: no GPU node, or none answered):
        see :func:`_smallest_gpu_memory`."""
        return _smallest_gpu_memory(self._ray, timeout)

    def default_window(self) -> int:
        res = self._ray.cluster_resources()
        return max(128, 4 * int(res.get("CPU", 0) + res.get("GPU", 0)))

    def put(self, data: bytes) -> Any:
        return self._ray.put(data)

    def submit(self, job: Job, executor: str | Callable, handles: list, attempt: int) -> Any:
        fn = self._gpu_fn if job.num_gpus > 0 else self._cpu_fn
        # refs passed as top-level arguments are resolved by Ray before the task starts
        return fn.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=job.label).remote(
            executor, job.spec_json, JobContext.of(job, attempt), *handles
        )

    def wait(self, handles: list, timeout: float | None = None) -> list[tuple[Any, Outcome]]:
        """Outcomes of the tasks that finished within ``timeout`` seconds (at least one when None)."""
        ray = self._ray
        ready, rest = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:  # collect everything else already finished in the same turn
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except ray.exceptions.TaskCancelledError as exc:
                out.append((ref, Outcome("cancelled", error=one_line(exc))))
            except ray.exceptions.RayTaskError as exc:
                # raised outside the executor's try (e.g. argument deserialisation): not transient
                out.append((ref, Outcome("error", error=one_line(exc), traceback=str(exc))))
            except ray.exceptions.RayError as exc:  # worker died, node lost, object lost, OOM kill
                out.append((ref, Outcome("system", error=one_line(exc), traceback=str(exc))))
        return out

    def cancel(self, handles: list) -> None:
        """Stop the tasks for good (force: the worker is killed, so a job on a cluster stops computing)."""
        for ref in handles:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)


def _smallest_gpu_memory(ray: Any, timeout: float) -> float:
    """The smallest GPU memory over the alive GPU nodes, in bytes (0: no GPU node, or none answered):
    one small task per node reads it there (Ray's resources do not carry it). Packs formed on the
    driver may land on any node, so the smallest card bounds them."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    probe = ray.remote(max_retries=0, max_calls=1)(gpu_total_memory)  # no worker keeps a CUDA context
    refs = [probe.options(num_cpus=0, num_gpus=0.01, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote() for node in nodes]
    try:
        sizes = [s for s in ray.get(refs, timeout=timeout) if s > 0]
    except Exception as exc:  # noqa: BLE001 - busy or lost GPUs: packs are then bounded by pack_size alone
        LOG.warning("could not read the GPUs' memory (%s); set ray.pack_gpu_memory_gb", one_line(exc))
        return 0.0
    return float(min(sizes, default=0.0))


# ------------------------------------------------------------------------------------------------- Ray
def check_address(address: str | None) -> None:
    """Fail fast, with one line, for a ``host:port`` address that does not resolve or refuses connections.

    Why: ``ray.init`` retries such an address for minutes before it gives up. ``auto`` and ``ray://`` are
    left to Ray (it answers those at once). Raises :class:`RayUnavailable`.
    """
    addr = address or os.environ.get("RAY_ADDRESS") or ""
    if addr in ("", "auto", LOCAL):
        return
    target = addr.split("://", 1)[1] if "://" in addr else addr
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailable(f"Ray address {addr!r} is not 'auto', 'local', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach Ray at {addr}: {exc.strerror or exc}") from None


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> str:
    """Start or join Ray unless it is already initialised; return a one-line description of it.

    ``address=None`` starts a new local instance of its own (never one that a ``ray start`` on this machine left
    running), unless ``RAY_ADDRESS`` is set (then Ray joins that);
    ``"auto"`` joins the cluster of this node; ``"ray://host:10001"`` uses Ray Client. ``num_cpus`` and
    ``object_store_memory`` size a *local* instance only (a cluster has its own sizes, so they are ignored
    with a warning when joining). The dashboard is off: nothing here needs it. Raises
    :class:`RayUnavailable` (one line) when Ray cannot be reached.
    """
    import ray

    log = log or LOG
    if not ray.is_initialized():
        joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
        kwargs: dict[str, Any] = {"ignore_reinit_error": True}
        if runtime_env is not None:
            kwargs["runtime_env"] = dict(runtime_env)
        on_term = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with sys.exit: keep the caller's
        try:
            if joining:
                check_address(address)
                if num_cpus is not None or object_store_memory is not None:
                    log.warning("joining Ray at %s: num_cpus / object_store_memory are ignored",
                                address or "$RAY_ADDRESS")
                ray.init(address=address, **kwargs)
            else:  # "local": a new instance of our own; with no address Ray would join the cluster that the
                # last `ray start` on this machine recorded in /tmp/ray/ray_current_cluster (somebody else's)
                ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                         include_dashboard=False, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            if isinstance(exc, RayUnavailable):
                raise
            raise RayUnavailable(f"cannot {'join' if joining else 'start'} Ray: {one_line(exc)}") from None
        finally:
            if on_term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_term)
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"Ray with {nodes} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)"


def ray_is_initialized() -> bool:
    """Whether this process is connected to Ray (without importing Ray when nothing did yet)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shutdown_ray() -> None:
    """Disconnect from Ray; a local instance started by this process stops with it."""
    if ray_is_initialized():
        sys.modules["ray"].shutdown()


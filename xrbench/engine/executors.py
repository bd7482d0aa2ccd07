"""Where independent tasks run: in this process one after another (``local``, the default), or
as Ray tasks (``ray``) on a local Ray cluster started for the run or on an existing one
(``--ray-address``). xrbench has no scheduler of its own: Ray places the tasks, the executor
only submits them and collects their results.

Two users: :mod:`xrbench.sweep` (one task per cell of a sweep, each training and evaluating
one entry) and sharded evaluation (:mod:`xrbench.engine.sharding`, one task per shard of a stage).

    with get_executor("ray") as ex:            # starts (and later stops) a local cluster
        outcomes = ex.map(fn, items, catch=True)

A task's function and items must be picklable (Ray pickles them with cloudpickle); on a
multi-machine cluster every worker needs xrbench (and any plugin the task uses) installed.
Ray is optional: ``pip install "xrbench[ray]"``; asking for it without Ray installed is an
:class:`~xrbench.errors.XRBenchError` naming that command.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from ..errors import XRBenchError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
RAY_INSTALL = 'pip install "xrbench[ray]"'


@dataclass
class Outcome(Generic[R]):
    """What one task gave: its ``index`` in the submitted items, its ``value`` (None when it
    failed), the ``error`` (one line: the exception's type and message) and ``trace`` (the
    whole traceback) when it failed, and its wall ``seconds``."""

    index: int
    value: R | None = None
    error: str | None = None
    trace: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _timed_call(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float]:
    """``(fn(item), seconds)``: runs inside the task (a Ray worker, or this process)."""
    t0 = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - t0


class Executor:
    """Runs ``fn(item)`` for each item; see :meth:`map`."""

    name = "executor"

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release what the executor started (a local Ray cluster)."""

    def describe(self) -> str:
        return self.name

    def parallelism(self) -> int:
        """How many tasks can run at once (the default number of shards)."""
        return 1

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, catch: bool = False,
            gpus_per_task: float = 0.0, cpus_per_task: float = 1.0,
            on_done: Callable[[Outcome[R]], None] | None = None) -> list[Outcome[R]]:
        """``fn(item)`` for every item, as independent tasks; the outcomes in item order.

        ``catch``: a task that raises gives an :class:`Outcome` with its ``error`` and the
        others go on; else the first failure is raised (in item order for ``local``, in
        completion order for ``ray``) once it is seen. ``on_done`` is called in this process
        with each outcome as it completes (progress bars). ``cpus_per_task`` and
        ``gpus_per_task`` are the resources Ray reserves per task (ignored locally).
        """
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every task in this process, one after another, in item order."""

    name = "local"

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, catch: bool = False,
            gpus_per_task: float = 0.0, cpus_per_task: float = 1.0,
            on_done: Callable[[Outcome[R]], None] | None = None) -> list[Outcome[R]]:
        outcomes: list[Outcome[R]] = []
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            try:
                value, seconds = _timed_call(fn, item)
                done: Outcome[R] = Outcome(i, value, seconds=seconds)
            except (Exception, KeyboardInterrupt) as exc:
                if not catch or isinstance(exc, KeyboardInterrupt):
                    raise
                done = Outcome(i, None, _one_line(exc), traceback.format_exc(),
                               time.perf_counter() - t0)
            outcomes.append(done)
            if on_done is not None:
                on_done(done)
        return outcomes


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise XRBenchError(f"--executor ray needs Ray, which is not installed; install it "
                           f"with: {RAY_INSTALL}") from None
    return ray


class RayExecutor(Executor):
    """Every task a Ray task. ``address`` None starts a local Ray cluster on first use with
    this machine's CPUs and GPUs as resources (and stops it on :meth:`close`); an address
    (``ray://host:10001``, ``host:6379`` or ``auto``) connects to a running cluster, which is
    left running. A Ray session already initialised in this process is used as it is."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.ray = _import_ray()
        self.address = address
        self._started = False

    def describe(self) -> str:
        return f"ray ({self.address or 'local cluster'})"

    def _ensure(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                import torch

                ray.init(num_cpus=os.cpu_count() or 1,
                         num_gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                         **kwargs)
                self._started = True
        except Exception as exc:  # noqa: BLE001 - Ray's connection errors vary by version
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
            raise XRBenchError(f"could not start or reach {where}: {_one_line(exc)}") from None
        log.info("Ray: %s", ray.cluster_resources())

    def parallelism(self) -> int:
        """The CPUs of the Ray cluster (starting the local one if needed)."""
        self._ensure()
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, catch: bool = False,
            gpus_per_task: float = 0.0, cpus_per_task: float = 1.0,
            on_done: Callable[[Outcome[R]], None] | None = None) -> list[Outcome[R]]:
        self._ensure()
        ray = self.ray
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                            max_retries=0)(_timed_call)
        fn_ref = ray.put(fn)
        pending = {remote.remote(fn_ref, item): i for i, item in enumerate(items)}
        outcomes: dict[int, Outcome[R]] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        value, seconds = ray.get(ref)
                        done: Outcome[R] = Outcome(i, value, seconds=seconds)
                    except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the task's
                        cause = getattr(exc, "cause", None) or exc
                        if not catch:
                            if isinstance(cause, XRBenchError):
                                raise XRBenchError(str(cause)) from None
                            raise
                        done = Outcome(i, None, _one_line(cause), str(exc))
                    outcomes[i] = done
                    if on_done is not None:
                        on_done(done)
        except BaseException:
            for ref in pending:  # do not leave tasks running behind a failure or ^C
                ray.cancel(ref, force=True)
            raise
        return [outcomes[i] for i in range(len(items))]


def get_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); ``address`` only with ``ray``."""
    if name == "local":
        if address:
            raise XRBenchError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise XRBenchError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")

"""Executors: run tasks somewhere, hand each result back to the driver as it finishes.

One interface (:class:`Executor`), a small registry (:data:`EXECUTORS`, :func:`make_executor`):

- ``serial``: in this process, one model load per model;
- ``ray``: a pool of Ray actors, each loading each model once; tasks are handed to idle
  actors and results gathered in the driver with ``ray.wait`` as they complete. Without an
  address it starts a local cluster of ``workers`` CPUs.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.errors import WorkbenchError
from workbench.report.plan import ModelSpec, ReportError
from workbench.report.tasks import Task, execute

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

DoneFn = Callable[[Task, Any], None]
TaskProgressFn = Callable[[Task, int, int], None]
CONNECT_TIMEOUT_S = 10.0


def load(spec: ModelSpec) -> LoadedModel:
    """Load the model a spec names (nothing is downloaded)."""
    from workbench.lm import load_model

    return load_model(spec.name, dtype=spec.dtype, device=spec.device)


class Executor(ABC):
    """Runs tasks; calls ``on_done(task, result)`` in the driver as each one finishes."""

    name: ClassVar[str] = ""

    @abstractmethod
    def run(
        self, tasks: Sequence[Task], on_done: DoneFn, on_progress: TaskProgressFn | None = None
    ) -> None:
        """Run every task; results arrive through ``on_done`` (in completion order)."""

    def adopt(self, models: Mapping[ModelSpec, LoadedModel]) -> None:  # noqa: B027  (optional hook)
        """Models already loaded in this process, for executors that run tasks here."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release workers and models."""

    def describe(self) -> dict[str, Any]:
        """Parameters for the report's summary."""
        return {"executor": self.name}


class SerialExecutor(Executor):
    """Runs tasks in order in this process."""

    name = "serial"

    def __init__(self, **_: Any) -> None:
        self.models: dict[ModelSpec, LoadedModel] = {}

    def adopt(self, models: Mapping[ModelSpec, LoadedModel]) -> None:
        self.models.update(models)

    def run(
        self, tasks: Sequence[Task], on_done: DoneFn, on_progress: TaskProgressFn | None = None
    ) -> None:
        for task in tasks:
            if task.model not in self.models:
                self.models[task.model] = load(task.model)

            def progress(done: int, total: int, task: Task = task) -> None:
                if on_progress is not None:
                    on_progress(task, done, total)

            on_done(task, execute(task, self.models[task.model], progress))

    def close(self) -> None:
        self.models.clear()


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port`` or ``ray://host:port``), None for
    ``auto`` / ``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ReportError(f"--address {address!r}: give HOST:PORT or ray://HOST:PORT")
    return host or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (within ``timeout`` seconds) when nothing listens at a Ray address."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise ReportError(
            f"Ray address {address} does not answer within {timeout:.0f} s ({exc}); start the "
            "cluster (`ray start --head`) or check the address"
        ) from None


def _runtime_env() -> dict[str, Any]:
    """Environment of Ray workers: the project importable, the model cache, offline."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    for key in ("WORKBENCH_CACHE", "HF_HOME", "OMP_NUM_THREADS"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return {"env_vars": env}


class RayExecutor(Executor):
    """A pool of ``workers`` Ray actors (``num_gpus`` GPUs each); see the module docstring."""

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int = 2, num_gpus: float = 0.0, **_: Any
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ReportError(
                "--executor ray needs Ray: pip install 'attention-workbench[report]'"
            ) from None
        if workers < 1:
            raise ReportError(f"--workers must be >= 1, got {workers}")
        self.address, self.workers, self.num_gpus = address, workers, num_gpus
        if address:
            check_reachable(address)
        import torch

        threads = torch.get_num_threads()
        env = _runtime_env()
        env["env_vars"].setdefault("OMP_NUM_THREADS", str(threads))
        start = time.perf_counter()
        try:
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=workers,
                    num_gpus=None,
                    include_dashboard=False,
                    object_store_memory=200 * 1024**2,
                    runtime_env=env,
                    log_to_driver=False,
                )
        except Exception as exc:  # Ray raises several types for a cluster it cannot join
            raise ReportError(f"cannot start or join the Ray cluster ({exc})") from None
        self.startup_s = time.perf_counter() - start
        actor = ray.remote(_RayWorker).options(num_cpus=1, num_gpus=num_gpus)
        self.actors = [actor.remote(threads) for _ in range(workers)]
        self._ray = ray

    def run(
        self, tasks: Sequence[Task], on_done: DoneFn, on_progress: TaskProgressFn | None = None
    ) -> None:
        ray = self._ray
        queue = list(tasks)
        idle = list(self.actors)
        running: dict[Any, tuple[Task, Any]] = {}
        while queue or running:
            while queue and idle:
                task, actor = queue.pop(0), idle.pop(0)
                running[actor.execute.remote(task)] = (task, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            task, actor = running.pop(ready[0])
            idle.append(actor)
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                if isinstance(getattr(exc, "cause", None), WorkbenchError):
                    raise exc.cause from None  # a user error: its own one-line message
                raise exc.as_instanceof_cause() from None
            if on_progress is not None:
                on_progress(task, task.unit.n_prompts, task.unit.n_prompts)
            on_done(task, result)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self._ray.kill(actor)
        self.actors = []
        if getattr(self, "_ray", None) is not None and self._ray.is_initialized():
            self._ray.shutdown()

    def describe(self) -> dict[str, Any]:
        return {
            "executor": self.name,
            "address": self.address or "local cluster",
            "workers": self.workers,
            "num_gpus_per_worker": self.num_gpus,
            "ray_startup_s": round(self.startup_s, 2),
        }


class _RayWorker:
    """A Ray actor: loads each model once, computes tasks."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # same thread count as the driver: same float sums
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.models: dict[ModelSpec, LoadedModel] = {}

    def execute(self, task: Task) -> Any:
        if task.model not in self.models:
            self.models[task.model] = load(task.model)
        return execute(task, self.models[task.model])


EXECUTORS: dict[str, type[Executor]] = {"serial": SerialExecutor, "ray": RayExecutor}


def make_executor(name: str, **options: Any) -> Executor:
    """The executor registered as ``name``, built with ``options``."""
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ReportError(
            f"unknown executor {name!r}; known: {', '.join(sorted(EXECUTORS))}"
        ) from None
    return cls(**options)


__all__ = ["EXECUTORS", "Executor", "RayExecutor", "SerialExecutor", "make_executor"]

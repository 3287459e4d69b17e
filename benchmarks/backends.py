"""
Where benchmark runs execute. Every backend runs the same job function (``benchmarks.runner.execute``) and writes
the same result files (``benchmarks.runner.save_record``, atomically):

- ``local`` (default): one fresh worker process per run (``multiprocessing`` spawn), at most ``jobs`` at a time. A
  crash of the process (segfault, out of memory, ``--timeout``) is recorded as a failed run; the sweep goes on.
  The worker's own output (C-level warnings included) goes to ``<results>/logs/<run id>.log``.
- ``ray``: one Ray task per run (``num_cpus=1``) on a local instance or a cluster (``address="auto"`` or
  ``host:port``); the task returns the record and the driver writes the file, so the workers need no shared disk.
- ``inline``: in the calling process, one run after the other (debugging, tests).
"""

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Any

from benchmarks.runner import (
    SCHEMA_VERSION,
    THREAD_ENV,
    Progress,
    RunSpec,
    execute,
    load_record,
    remove_partial_files,
    result_path,
    save_record,
)
from benchmarks.suites import BenchmarkInputError

POLL_SECONDS = 0.2


def failure_record(spec: RunSpec, error_type: str, message: str, log: str = "") -> dict[str, Any]:
    """
    :param spec: the run
    :param error_type: short name of what happened
    :param message: what happened
    :param log: the end of the run's output, if known
    :return: a failed-run record for a run whose job could not report by itself
    """
    return {
        "schema": SCHEMA_VERSION,
        "status": "failed",
        "run_id": spec.run_id,
        "run": spec.run_info(),
        "attempt": spec.attempt,
        "error": {"type": error_type, "message": message, "traceback": ""},
        "log_tail": log[-4000:],
    }


class Backend(ABC):
    """Runs a list of jobs, writes their result files and reports to a :class:`Progress`."""

    @abstractmethod
    def run(self, specs: list[RunSpec], results_dir: str | Path, progress: Progress) -> None:
        """
        :param specs: the runs (each gets a fresh ``attempt`` id)
        :param results_dir: the results directory
        :param progress: the display
        """

    @abstractmethod
    def describe(self) -> str:
        """:return: a short description for the sweep's header"""


class InlineBackend(Backend):
    """Runs the jobs in this process, one after the other."""

    def describe(self) -> str:
        return "inline (in this process)"

    def run(self, specs: list[RunSpec], results_dir: str | Path, progress: Progress) -> None:
        for spec in specs:
            spec.attempt = os.urandom(8).hex()
            progress.started(spec)
            record = execute(spec, progress=lambda steps, spec=spec: (progress.steps(spec, steps), progress.refresh()))
            save_record(result_path(results_dir, spec), record)
            progress.finished(spec, record)


def _local_worker(spec_data: dict[str, Any], path: str, log_path: str, counter: Any) -> None:
    # A fresh process (spawn): send its file descriptors 1 and 2 (C libraries write there too) to the run's log
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    for name, value in THREAD_ENV.items():
        os.environ.setdefault(name, value)

    def report(steps: int) -> None:
        counter.value = steps

    record = execute(spec_data, progress=report)
    save_record(path, record)
    print(f"{record['status']}: {path}")


class LocalBackend(Backend):
    """
    One worker process per run, at most ``jobs`` at a time.

    :param jobs: number of runs at the same time
    :param timeout: seconds after which a run is killed and recorded as failed (``None``: no limit)
    """

    def __init__(self, jobs: int = 1, timeout: float | None = None) -> None:
        self.jobs = jobs
        self.timeout = timeout

    def describe(self) -> str:
        return f"local ({self.jobs} worker process{'es' if self.jobs > 1 else ''})"

    def run(self, specs: list[RunSpec], results_dir: str | Path, progress: Progress) -> None:
        context = multiprocessing.get_context("spawn")
        pending = deque(specs)
        running: dict[str, tuple[Any, RunSpec, Any, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    spec = pending.popleft()
                    spec.attempt = os.urandom(8).hex()
                    counter = context.Value("q", 0, lock=False)
                    paths = (str(result_path(results_dir, spec)), str(self._log_path(results_dir, spec)))
                    process = context.Process(
                        target=_local_worker,
                        args=(spec.to_dict(), *paths, counter),
                        name=f"bench-{spec.run_id}",
                        daemon=True,
                    )
                    process.start()
                    running[spec.run_id] = (process, spec, counter, time.monotonic())
                    progress.started(spec)
                time.sleep(POLL_SECONDS)
                for key, (process, spec, counter, started) in list(running.items()):
                    progress.steps(spec, counter.value)
                    timed_out = self.timeout is not None and time.monotonic() - started > self.timeout
                    if process.is_alive() and not timed_out:
                        continue
                    if timed_out and process.is_alive():
                        process.kill()
                    process.join()
                    del running[key]
                    record = self._collect(spec, process.exitcode, results_dir, timed_out)
                    progress.finished(spec, record)
                progress.refresh()
        except BaseException:
            for process, spec, _, _ in running.values():
                self._stop(process)
                remove_partial_files(result_path(results_dir, spec))
            raise

    @staticmethod
    def _log_path(results_dir: str | Path, spec: RunSpec) -> Path:
        return Path(results_dir) / "logs" / f"{spec.run_id}.log"

    @staticmethod
    def _stop(process: Any) -> None:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()

    def _collect(self, spec: RunSpec, exitcode: int | None, results_dir: str | Path, timed_out: bool) -> dict[str, Any]:
        path = result_path(results_dir, spec)
        record = load_record(path)
        if record is not None and record.get("attempt") == spec.attempt:
            return record
        log_path = self._log_path(results_dir, spec)
        log = ""
        with contextlib.suppress(OSError):
            log = log_path.read_text(errors="replace")
        if timed_out:
            kind, message = "Timeout", f"stopped after --timeout {self.timeout} s"
        else:
            signal_name = ""
            if exitcode is not None and exitcode < 0:
                with contextlib.suppress(ValueError):
                    signal_name = f" ({signal.Signals(-exitcode).name})"
            kind, message = "WorkerDied", f"the worker process exited with code {exitcode}{signal_name} without a result"
        record = failure_record(spec, kind, f"{message}; its output: {log_path}", log)
        remove_partial_files(path)
        save_record(path, record)
        return record


def _ray_job(spec_data: dict[str, Any]) -> dict[str, Any]:
    for name, value in THREAD_ENV.items():
        os.environ.setdefault(name, value)
    return execute(spec_data)


class RayBackend(Backend):
    """
    One Ray task per run (``num_cpus=1``, no retries); the driver writes the result files.

    :param address: the cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``), or ``None`` for a local instance
        with ``jobs`` CPUs
    :param jobs: tasks in flight at most (default with a cluster: its number of CPUs)
    :param timeout: seconds after which a task is cancelled and the run recorded as failed
    :param ship_code: send the ``benchmarks`` and ``sb3_trust`` packages to the workers (``py_modules``); otherwise
        the workers must have them installed (the local instance gets this repository on its ``PYTHONPATH``)
    """

    def __init__(
        self, address: str | None = None, jobs: int | None = None, timeout: float | None = None, ship_code: bool = False
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as error:
            raise BenchmarkInputError(
                f"--backend ray needs ray ({error}): pip install 'sb3-trust[ray]' (or 'ray[default]')"
            ) from error
        self.address = address
        self.jobs = jobs
        self.timeout = timeout
        self.ship_code = ship_code

    def describe(self) -> str:
        where = f"cluster at {self.address}" if self.address else "local instance"
        in_flight = f"{self.jobs} tasks" if self.jobs else "one task per cluster CPU"
        return f"ray ({where}, {in_flight} in flight)"

    def _runtime_env(self) -> dict[str, Any]:
        import benchmarks
        import sb3_trust

        repo = str(Path(benchmarks.__file__).resolve().parent.parent)
        env_vars = dict(THREAD_ENV)
        runtime_env: dict[str, Any] = {"env_vars": env_vars}
        if self.ship_code:
            runtime_env["py_modules"] = [
                str(Path(benchmarks.__file__).resolve().parent),
                str(Path(sb3_trust.__file__).resolve().parent),
            ]
            runtime_env["excludes"] = ["results/", "logs/", "plots/", "__pycache__/"]
        elif self.address is None:
            env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
        return runtime_env

    def run(self, specs: list[RunSpec], results_dir: str | Path, progress: Progress) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            init_kwargs: dict[str, Any] = dict(
                address=self.address,
                runtime_env=self._runtime_env(),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            if self.address is None:
                init_kwargs["num_cpus"] = self.jobs or 1
            ray.init(**init_kwargs)
        try:
            self._run(ray, specs, results_dir, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, specs: list[RunSpec], results_dir: str | Path, progress: Progress) -> None:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
        in_flight = self.jobs or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        pending = deque(specs)
        running: dict[Any, tuple[RunSpec, float]] = {}
        try:
            while pending or running:
                while pending and len(running) < in_flight:
                    spec = pending.popleft()
                    spec.attempt = os.urandom(8).hex()
                    running[remote.remote(spec.to_dict())] = (spec, time.monotonic())
                    progress.started(spec)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec, _ = running.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as error:  # the task or its worker died
                        record = failure_record(spec, type(error).__name__, str(error))
                    self._save(results_dir, spec, record, progress)
                if self.timeout is not None:
                    for ref, (spec, started) in list(running.items()):
                        if time.monotonic() - started > self.timeout:
                            ray.cancel(ref, force=True)
                            running.pop(ref)
                            record = failure_record(spec, "Timeout", f"cancelled after --timeout {self.timeout} s")
                            self._save(results_dir, spec, record, progress)
                progress.refresh()
        except BaseException:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _save(results_dir: str | Path, spec: RunSpec, record: dict[str, Any], progress: Progress) -> None:
        path = result_path(results_dir, spec)
        remove_partial_files(path)
        save_record(path, record)
        progress.finished(spec, record)


def make_backend(
    name: str, jobs: int = 1, address: str | None = None, timeout: float | None = None, ship_code: bool = False
) -> Backend:
    """
    :param name: ``local``, ``ray`` or ``inline``
    :param jobs: runs at the same time
    :param address: ray only: the cluster address
    :param timeout: seconds per run (local and ray)
    :param ship_code: ray only: send the code along
    :return: the backend
    :raise BenchmarkInputError: for an unknown name, or ray missing
    """
    if name == "local":
        return LocalBackend(jobs=jobs, timeout=timeout)
    if name == "inline":
        return InlineBackend()
    if name == "ray":
        in_flight = jobs if address is None or jobs > 1 else None  # on a cluster, by default: as many as it has CPUs
        return RayBackend(address=address, jobs=in_flight, timeout=timeout, ship_code=ship_code)
    raise BenchmarkInputError(f"unknown backend {name!r}; valid backends: local, ray, inline")

"""
The benchmark runner: ``python -m benchmarks run``.

A run is (algorithm, env, seed, budget). Every run, ours and the references alike, goes through the same code path
(:func:`execute`): rl-zoo3's ``ExperimentManager`` (``sb3_trust.zoo.TrustExperimentManager``, which behaves exactly
as rl-zoo3's own for ``ppo``/``trpo``) reads the yml entry, builds the env and the model; we then call
``model.learn`` with an evaluation callback, on a separate evaluation env, and write one JSON file per run.

Examples::

    python -m benchmarks run --suite classic --seeds 5 --jobs 2        # resumable; skips finished runs
    python -m benchmarks run --suite mujoco --seeds 5 --backend ray --address auto
    python -m benchmarks run --suite quick --seeds 1 --timesteps 2000 --results-dir /tmp/x
    python -m benchmarks run --env Hopper-v4 --algo trust_ppo ppo --seeds 3
    python -m benchmarks run --list

See benchmarks/README.md for the protocol.
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from benchmarks.checkpoint import (
    RESEED_STRIDE,
    RunCheckpoint,
    capture_rng,
    make_checkpoint_callback,
    restore_model,
    restore_rng,
    vec_normalize_stats,
)
from benchmarks.envs import register_envs
from benchmarks.files import remove_partial_files, write_atomically
from benchmarks.suites import (
    ALGOS,
    REFERENCE_KEYS,
    SUITES,
    BenchAlgo,
    BenchmarkInputError,
    Suite,
    budget,
    check_env_registered,
    get_algo,
    get_suite,
    yml_entry,
)

SCHEMA_VERSION = 1
# The evaluation env of a run with seed s is seeded with s + EVAL_SEED_OFFSET
EVAL_SEED_OFFSET = 10_000
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Default evaluation: 20 points per curve, but not more often than every MIN_EVAL_FREQ steps
EVAL_POINTS = 20
MIN_EVAL_FREQ = 1000
LOG_TAIL_CHARS = 4000
# Every process of a sweep runs with one thread per library (torch is also pinned in the job itself)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Distributions whose versions are recorded
VERSIONED = {
    "numpy": "numpy",
    "torch": "torch",
    "stable_baselines3": "stable_baselines3",
    "sb3_contrib": "sb3_contrib",
    "rl_zoo3": "rl_zoo3",
    "gymnasium": "gymnasium",
    "mujoco": "mujoco",
    "box2d": "box2d",
    "sb3_trust": "sb3_trust",
}
# The library whose version decides whether a reference result is current
REFERENCE_LIBRARY = {"ppo": "stable_baselines3", "trpo": "sb3_contrib", "ppo_mask": "sb3_contrib"}
# Sub-packages of sb3_trust that are glue, not algorithm code: not part of the code hash
GLUE_PACKAGES = ("zoo",)
# The source files of the algorithm code
ALGORITHM_SOURCES = ("*.py",)
# The files each algorithm family's code is made of (prefixes, relative to the package): a change elsewhere does not
# make its results stale. TrustPPO: its folder and the shared modules it imports; TrustTRPO/NPG: all but TrustPPO's folder.
PPO_FILES = (
    "__init__.py",
    "ppo/",
    *(
        f"common/{name}.py"
        for name in (
            "__init__",
            "base",
            "kl",
            "learning_rates",
            "losses",
            "masking",
            "messages",
            "policy_utils",
            "projections",
            "reference",
            "rollout",
            "safety",
            "schedules",
            "update",
            "validation",
        )
    ),
    "accel/",
)


def algorithm_family(zoo_key: str) -> str:
    """:return: ``"ppo"`` for the TrustPPO keys, ``"trpo"`` for TrustTRPO/TrustNPG"""
    return "ppo" if zoo_key.startswith("trust_ppo") else "trpo"


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """
    Everything a job needs (plain data: it is sent to worker processes and Ray tasks).

    :param algo: benchmark algorithm name (see ``benchmarks.suites.ALGOS``)
    :param zoo_key: its rl-zoo3 key
    :param label: the name the result is filed under: ``algo``, or ``algo+<hash>`` with command-line overrides
    :param env: env id
    :param seed: seed of the training env and the model
    :param timesteps: training budget
    :param hyperparams: overrides of the yml entry (the algorithm's own and the command line's), as rl-zoo3's
        ``--hyperparams``
    :param cli_hyperparams: the command-line overrides only, as given (strings)
    :param entry: the yml entry with the overrides applied (what rl-zoo3 reads), recorded to detect config changes
    :param eval_freq: evaluate every ``eval_freq`` training steps (and at the start and the end)
    :param eval_episodes: deterministic episodes per evaluation
    :param final_eval_episodes: deterministic episodes of the final evaluation (the final score)
    :param eval_seed: seed of the evaluation env
    :param attempt: unique id of this attempt (to tell a fresh result from an old one)
    :param driver: facts about the process that planned the run (git commit, code hash, command line)
    :param checkpoint_dir: where the checkpoints of runs in progress go (``""``: no checkpoints; see
        ``benchmarks.checkpoint``)
    :param checkpoint_seconds: the least wall time between two checkpoints of the run
    """

    algo: str
    zoo_key: str
    label: str
    env: str
    seed: int
    timesteps: int
    hyperparams: dict[str, Any] = field(default_factory=dict)
    cli_hyperparams: dict[str, str] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)
    eval_freq: int = 0
    eval_episodes: int = 10
    final_eval_episodes: int = 20
    eval_seed: int = 0
    attempt: str = ""
    driver: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: str = ""
    checkpoint_seconds: float = 600.0

    @property
    def run_id(self) -> str:
        """:return: the run's identity, also its path under the results directory (without ``.json``)"""
        return run_id(self.env, self.label, self.timesteps, self.seed)

    @property
    def checkpoint_file(self) -> Path | None:
        """:return: the file of the run's checkpoint (``None``: no checkpoints)"""
        return Path(self.checkpoint_dir) / f"{self.run_id}.pkl" if self.checkpoint_dir else None

    def to_dict(self) -> dict[str, Any]:
        """:return: the spec as a dict"""
        return asdict(self)

    def run_info(self) -> dict[str, Any]:
        """:return: the ``run`` field of its result record (finished or failed)"""
        return {
            "algo": self.algo,
            "zoo_key": self.zoo_key,
            "label": self.label,
            "env": self.env,
            "seed": self.seed,
            "timesteps": self.timesteps,
            "hyperparams": jsonable(self.hyperparams),
            "cli_hyperparams": dict(self.cli_hyperparams),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        """
        :param data: a dict made by ``to_dict``
        :return: the spec
        """
        return cls(**data)


def run_id(env: str, label: str, timesteps: int, seed: int) -> str:
    """
    :param env: env id
    :param label: the algorithm's label
    :param timesteps: budget
    :param seed: seed
    :return: ``<env>/<label>/t<timesteps>/seed<seed>``
    """
    return f"{env}/{label}/t{int(timesteps)}/seed{int(seed)}"


def result_path(results_dir: str | Path, spec: RunSpec) -> Path:
    """
    :param results_dir: the results directory
    :param spec: the run
    :return: the path of its result file
    """
    return Path(results_dir) / f"{spec.run_id}.json"


def default_eval_freq(timesteps: int) -> int:
    """
    :param timesteps: the budget
    :return: the default evaluation period: ``EVAL_POINTS`` points per run, at most one every ``MIN_EVAL_FREQ`` steps
    """
    return max(math.ceil(timesteps / EVAL_POINTS), MIN_EVAL_FREQ)


# ----------------------------------------------------------------------------------------------------------------------
# Code identity and versions
# ----------------------------------------------------------------------------------------------------------------------


def package_dir() -> Path:
    """:return: the directory of the imported ``sb3_trust`` package"""
    import sb3_trust

    return Path(sb3_trust.__file__).resolve().parent


def algorithm_code_hash(directory: str | Path | None = None, family: str | None = None) -> dict[str, Any]:
    """
    Hash of the algorithm code: every ``*.py`` and ``*.c`` of the ``sb3_trust`` package except the glue
    (``sb3_trust/zoo``) and, for one algorithm family, the files it does not use (see ``PPO_FILES``).
    A result whose hash differs from the current one was produced by other algorithm code (it is *stale*).

    :param directory: the package directory (default: the imported package)
    :param family: ``"ppo"``, ``"trpo"`` or ``None`` (all algorithm files)
    :return: ``{"hash": <16 hex digits>, "files": <number of files>}``
    """
    root = Path(directory) if directory is not None else package_dir()
    digest = hashlib.sha256()

    def belongs(relative: str) -> bool:
        if family == "ppo":
            return relative.startswith(PPO_FILES)
        return family is None or not relative.startswith("ppo/")

    files = sorted(
        path
        for pattern in ALGORITHM_SOURCES
        for path in root.rglob(pattern)
        if "__pycache__" not in path.parts
        and path.relative_to(root).parts[0] not in GLUE_PACKAGES
        and belongs(path.relative_to(root).as_posix())
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"hash": digest.hexdigest()[:16], "files": len(files)}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(directory: str | Path | None = None) -> dict[str, Any]:
    """
    :param directory: the ``sb3_trust`` package directory (default: the imported package)
    :return: ``head`` (the checked-out commit), ``algorithm_commit`` (the last commit that touched the package) and
        ``dirty`` (uncommitted changes in the package), or ``None`` values outside a git work tree
    """
    root = Path(directory) if directory is not None else package_dir()
    status = _git(["status", "--porcelain", "--", "."], root)
    return {
        "head": _git(["rev-parse", "HEAD"], root),
        "algorithm_commit": _git(["log", "-1", "--format=%H", "--", "."], root),
        "dirty": None if status is None else bool(status),
    }


def collect_versions() -> dict[str, str | None]:
    """:return: the versions of python and of the libraries a result depends on"""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, distribution in VERSIONED.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict[str, Any]:
    """:return: the machine a run ran on (speeds are only comparable on the same machine)"""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}


# ----------------------------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """
    :param value: any value (hyperparameters, schedules, classes, numpy scalars)
    :return: a JSON-serialisable version of it (unknown objects become their ``repr``, classes their dotted name)
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        with contextlib.suppress(Exception):
            return jsonable(value.item())
    return repr(value)


def _make_eval_recorder(
    eval_env: Any, eval_freq: int, n_episodes: int, progress: Callable[[int], None] | None, masked: bool = False
) -> Any:
    from sb3_contrib.common.maskable.evaluation import evaluate_policy as maskable_evaluate_policy
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import sync_envs_normalization

    def evaluate_episodes(model: Any, episodes: int) -> tuple[Any, Any]:
        if masked:  # sb3-contrib's evaluation: the env's action_masks() passed to predict
            return maskable_evaluate_policy(
                model, eval_env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True, use_masking=True
            )
        return evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)

    class EvalRecorder(BaseCallback):
        """
        Deterministic evaluation on a separate env at the start, every ``eval_freq`` steps, and on request; the time
        spent evaluating is measured so that it can be taken out of the training speed.
        """

        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, Any]] = []
            self.eval_seconds = 0.0
            self.next_eval = eval_freq
            self.last_reported = 0

        def evaluate(self, episodes: int) -> dict[str, Any]:
            start = time.perf_counter()
            sync_envs_normalization(self.model.get_env(), eval_env)
            returns, lengths = evaluate_episodes(self.model, episodes)
            self.eval_seconds += time.perf_counter() - start
            returns = [float(value) for value in returns]
            return {
                "timesteps": int(self.model.num_timesteps),
                "mean": float(sum(returns) / len(returns)),
                "std": float((sum((r - sum(returns) / len(returns)) ** 2 for r in returns) / len(returns)) ** 0.5),
                "returns": returns,
                "lengths": [int(value) for value in lengths],
            }

        def _on_training_start(self) -> None:
            if not self.curve:  # a resumed run has its curve so far
                self.curve.append(self.evaluate(n_episodes))

        def _on_step(self) -> bool:
            if progress is not None and self.num_timesteps - self.last_reported >= 256:
                progress(self.num_timesteps)
                self.last_reported = self.num_timesteps
            if eval_freq > 0 and self.num_timesteps >= self.next_eval:
                self.curve.append(self.evaluate(n_episodes))
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += eval_freq
            return True

    return EvalRecorder()


def _train_and_evaluate(spec: RunSpec, progress: Callable[[int], None] | None) -> dict[str, Any]:
    import torch as th

    th.set_num_threads(1)
    from sb3_trust.zoo import TrustExperimentManager, is_masked, register_zoo

    register_zoo()
    register_envs()  # in worker processes and Ray tasks too
    with tempfile.TemporaryDirectory(prefix="sb3_trust_bench_") as log_folder:
        manager = TrustExperimentManager(
            argparse.Namespace(**{key: value for key, value in spec.to_dict().items() if key != "driver"}),
            spec.zoo_key,
            spec.env,
            log_folder,
            n_timesteps=spec.timesteps,
            eval_freq=-1,  # our own evaluation below
            save_freq=-1,
            hyperparams=dict(spec.hyperparams) or None,
            seed=spec.seed,
            verbose=0,
            device="cpu",
        )
        setup_start = time.perf_counter()
        created = manager.setup_experiment()
        assert created is not None
        model, saved_hyperparams = created
        # The evaluation env: rl-zoo3's own (same wrappers; VecNormalize frozen and without reward normalisation),
        # with its own seed
        manager.seed = spec.eval_seed
        eval_env = manager.create_envs(1, eval_env=True, no_log=True)
        manager.seed = spec.seed
        setup_seconds = time.perf_counter() - setup_start

        checkpoint, resumed = _open_checkpoint(spec), None
        if checkpoint is not None and (resumed := checkpoint.load()) is not None:
            model = _resume(model, resumed, spec, eval_env)
        # A model with action masks (MaskablePPO, or ours with use_masking) is evaluated with them
        masked = is_masked(model)
        recorder = _make_eval_recorder(eval_env, spec.eval_freq, spec.eval_episodes, progress, masked=masked)
        callbacks = [*manager.callbacks, recorder]
        before = {"setup_s": 0.0, "learn_s": 0.0, "wall_s": 0.0, "resumed": []}
        if resumed is not None:
            recorder.curve, recorder.eval_seconds = resumed["curve"], resumed["eval_s"]
            recorder.next_eval = resumed["next_eval"]
            before = {key: resumed[key] for key in before}
            this_resumption = {"timesteps": int(model.num_timesteps), "at": _now(), "host": host_info()}
            before["resumed"] = [*before["resumed"], this_resumption]
        setup_seconds += before["setup_s"]
        learn_start = time.perf_counter()
        if checkpoint is not None:

            def checkpoint_state(model: Any) -> dict[str, Any]:
                learn_seconds = before["learn_s"] + time.perf_counter() - learn_start
                return {
                    **capture_rng(),
                    "vec_normalize": vec_normalize_stats(model.get_env()),
                    "curve": recorder.curve,
                    "eval_s": recorder.eval_seconds,
                    "next_eval": recorder.next_eval,
                    "setup_s": setup_seconds,
                    "learn_s": learn_seconds,
                    "wall_s": before["wall_s"] + time.perf_counter() - setup_start,
                    "resumed": before["resumed"],
                }

            callbacks.append(make_checkpoint_callback(checkpoint, checkpoint_state))
        if resumed is None:
            model.learn(manager.n_timesteps, callback=callbacks)
        else:
            restore_rng(resumed)
            model.learn(max(manager.n_timesteps - model.num_timesteps, 0), callback=callbacks, reset_num_timesteps=False)
        learn_seconds = before["learn_s"] + time.perf_counter() - learn_start
        # Training speed without the evaluations made during learn()
        train_seconds = learn_seconds - recorder.eval_seconds
        final = recorder.evaluate(spec.final_eval_episodes)
        curve = list(recorder.curve)
        if curve and curve[-1]["timesteps"] == final["timesteps"]:
            curve[-1] = final
        else:
            curve.append(final)
        training_returns = [float(info["r"]) for info in model.ep_info_buffer] if model.ep_info_buffer else []
        normalize = manager.normalize_kwargs if manager.normalize else None
        result = {
            "curve": curve,
            "final": final,
            "training_episodes": {
                "last_100_mean": (sum(training_returns) / len(training_returns)) if training_returns else None,
                "count": len(training_returns),
            },
            "timing": {
                "setup_s": setup_seconds,
                "learn_s": learn_seconds,
                "eval_s": recorder.eval_seconds,
                "train_s": train_seconds,
                "num_timesteps": int(model.num_timesteps),
                "steps_per_s": model.num_timesteps / train_seconds if train_seconds > 0 else None,
                "torch_threads": th.get_num_threads(),
            },
            "config": {
                "entry": jsonable(spec.entry),
                "hyperparams": jsonable(saved_hyperparams),
                "model_kwargs": jsonable(manager._hyperparams),
                "yml_path": manager.config,
                "n_envs": manager.n_envs,
                "normalize": jsonable(normalize),
                "env_wrapper": jsonable(manager.env_wrapper),
                "model_class": jsonable(type(model)),
                "eval_with_masks": masked,
            },
        }
        if resumed is not None:
            result["resumed"] = before["resumed"]
            result["wall_s_before_resume"] = before["wall_s"]
        model.get_env().close()
        eval_env.close()
    return result


def _open_checkpoint(spec: RunSpec) -> RunCheckpoint | None:
    """
    :param spec: the run
    :return: its checkpoint file (what a saved checkpoint must match to be used), or ``None`` without checkpoints
    """
    if spec.checkpoint_file is None or spec.checkpoint_seconds <= 0:
        return None
    identity = {
        "run": spec.run_info(),
        "entry": spec.entry,
        "eval": [spec.eval_freq, spec.eval_episodes, spec.final_eval_episodes, spec.eval_seed],
        "code": algorithm_code_hash(family=algorithm_family(spec.zoo_key))["hash"],
        "versions": collect_versions(),
    }
    return RunCheckpoint(spec.checkpoint_file, jsonable(identity), spec.checkpoint_seconds)


def _resume(model: Any, state: dict[str, Any], spec: RunSpec, eval_env: Any) -> Any:
    """
    :param model: the model the run's set-up made (its class and its env are used)
    :param state: the run's checkpoint
    :param spec: the run
    :param eval_env: the evaluation env
    :return: the checkpoint's model on the set-up's env, the envs reseeded (see ``benchmarks.checkpoint``)
    """
    env = model.get_env()
    resumed = restore_model(type(model), state, env)
    shift = RESEED_STRIDE * (len(state["resumed"]) + 1)
    env.seed(spec.seed + shift)
    eval_env.seed(spec.eval_seed + shift)
    return resumed


def execute(spec_data: dict[str, Any] | RunSpec, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """
    The job: train and evaluate one run. The same function runs in a local worker process, in a Ray task or inline.
    It does not raise (except on ``KeyboardInterrupt``): a crash becomes a record with ``status: "failed"``. With
    ``spec.checkpoint_dir``, the run resumes from its checkpoint if it has one, checkpoints itself, and deletes its
    checkpoint when it ends (``benchmarks.checkpoint``).

    :param spec_data: the run (a :class:`RunSpec` or its dict)
    :param progress: called now and then with the number of training steps done
    :return: the result record (see the README for its fields)
    """
    spec = spec_data if isinstance(spec_data, RunSpec) else RunSpec.from_dict(spec_data)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "status": "failed",
        "run_id": spec.run_id,
        "run": spec.run_info(),
        "eval": {
            "freq": spec.eval_freq,
            "episodes": spec.eval_episodes,
            "final_episodes": spec.final_eval_episodes,
            "deterministic": True,
            "seed": spec.eval_seed,
        },
        "attempt": spec.attempt,
        "started_at": _now(),
        "host": host_info(),
        "driver": jsonable(spec.driver),
    }
    buffer = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.simplefilter("default", UserWarning)
            record["versions"] = collect_versions()
            family = algorithm_family(spec.zoo_key)
            record["code"] = {**algorithm_code_hash(family=family), "family": family, "git": spec.driver.get("git")}
            record.update(_train_and_evaluate(spec, progress))
        record["status"] = "finished"
    except Exception as error:
        record["error"] = {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(),
        }
    # A resumed run's wall time includes its earlier parts (up to their last checkpoints)
    record["wall_s"] = time.perf_counter() - start + record.pop("wall_s_before_resume", 0.0)
    record["finished_at"] = _now()
    # The run ended here (finished, or failed with an exception: it starts again from scratch when rerun)
    if spec.checkpoint_file is not None:
        spec.checkpoint_file.unlink(missing_ok=True)
    record["log_tail"] = buffer.getvalue()[-LOG_TAIL_CHARS:]
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------------
# Result files
# ----------------------------------------------------------------------------------------------------------------------


def save_record(path: str | Path, record: dict[str, Any]) -> None:
    """
    Write a result atomically (:func:`benchmarks.files.write_atomically`): a reader, or a rerun after a crash, sees
    either the whole file or none.

    :param path: the result file
    :param record: the record
    """
    write_atomically(path, (json.dumps(record, indent=1, allow_nan=False, default=repr) + "\n").encode())


def load_record(path: str | Path) -> dict[str, Any] | None:
    """
    :param path: a result file
    :return: its record, or ``None`` if it is missing or unreadable
    """
    try:
        with open(path) as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(record: dict[str, Any] | None) -> bool:
    """
    :param record: a record or ``None``
    :return: whether it is a finished run
    """
    return record is not None and record.get("status") == "finished"


def iter_records(results_dir: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """
    :param results_dir: the results directory
    :return: every readable result file of the runner and its record (temporary files, logs, sweep manifests and
        other tools' JSON files excluded: a record must be at the path its ``run_id`` names)
    """
    root = Path(results_dir)
    if not root.is_dir():
        return
    for path in sorted(root.rglob("seed*.json")):
        if path.relative_to(root).parts[0] in ("sweeps", "logs"):
            continue
        record = load_record(path)
        run = record.get("run") if record is not None else None
        if record is None or not isinstance(run, dict) or record.get("status") not in ("finished", "failed"):
            continue
        if not {"env", "label", "timesteps", "seed"} <= set(run):
            continue
        where = path.relative_to(root).with_suffix("").as_posix()
        if where != run_id(run["env"], run["label"], run["timesteps"], run["seed"]):
            continue
        yield path, record


# ----------------------------------------------------------------------------------------------------------------------
# Staleness
# ----------------------------------------------------------------------------------------------------------------------


class CurrentState:
    """The current code, library versions and configs, against which results are checked (computed lazily)."""

    def __init__(self) -> None:
        self._code: dict[str | None, dict[str, Any]] = {}
        self._versions: dict[str, str | None] | None = None
        self._entries: dict[tuple[str, str, str], Any] = {}

    def code_hash(self, family: str | None = None) -> str:
        """
        :param family: the algorithm family (``None``: all algorithm files)
        :return: the current algorithm code hash
        """
        if family not in self._code:
            self._code[family] = algorithm_code_hash(family=family)
        return self._code[family]["hash"]

    @property
    def versions(self) -> dict[str, str | None]:
        """:return: the installed versions"""
        if self._versions is None:
            self._versions = collect_versions()
        return self._versions

    def entry(self, algo: str, env: str, cli_hyperparams: dict[str, str]) -> Any:
        """
        :param algo: benchmark algorithm name
        :param env: env id
        :param cli_hyperparams: the run's command-line overrides
        :return: the current effective yml entry (JSON-normalised), or an error string
        """
        key = (algo, env, json.dumps(cli_hyperparams, sort_keys=True))
        if key not in self._entries:
            try:
                entry = yml_entry(get_algo(algo), env, parse_hyperparams(cli_hyperparams))
                self._entries[key] = json.loads(json.dumps(jsonable(entry)))
            except BenchmarkInputError as error:
                self._entries[key] = f"error: {error}"
        return self._entries[key]


def staleness(record: dict[str, Any], current: CurrentState) -> list[str]:
    """
    Why a finished result no longer describes the current code (empty: it is current).

    - ours: the algorithm code hash differs (``sb3_trust/**/*.py`` except the zoo glue), or SB3's version does;
    - a reference: the version of its library (SB3 for ``ppo``, sb3-contrib for ``trpo`` and ``ppo_mask``) differs;
    - both: the yml entry (with the overrides) differs from the one the run used.

    :param record: a result record
    :param current: the current state
    :return: the reasons
    """
    reasons = []
    run = record["run"]
    versions = record.get("versions", {})
    if run["algo"] not in ALGOS:
        return [f"algorithm {run['algo']!r} is no longer defined"]
    reference = run["zoo_key"] in REFERENCE_LIBRARY
    libraries = [REFERENCE_LIBRARY[run["zoo_key"]]] if reference else ["stable_baselines3"]
    if not reference:
        code = record.get("code", {})
        now = current.code_hash(code.get("family"))
        if code.get("hash") != now:
            reasons.append(f"algorithm code changed ({code.get('hash')} → {now})")
    for library in libraries:
        if versions.get(library) != current.versions.get(library):
            reasons.append(f"{library} {versions.get(library)} → {current.versions.get(library)}")
    entry = current.entry(run["algo"], run["env"], run.get("cli_hyperparams", {}))
    recorded = record.get("config", {}).get("entry")
    if isinstance(entry, str):
        reasons.append(entry)
    elif recorded != entry:
        changed = sorted(
            key
            for key in set(entry) | set(recorded or {})
            if (recorded or {}).get(key, "<missing>") != entry.get(key, "<missing>") and key != "n_timesteps"
        )
        if changed:
            reasons.append(f"config changed: {', '.join(changed)}")
    return reasons


# ----------------------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """
    :param text: ``N`` (seeds 0..N-1) or a comma-separated list (``3,7,8``) or range (``5-9``)
    :return: the seeds
    :raise BenchmarkInputError: on anything else
    """
    try:
        if "," in text or "-" in text.strip("-"):
            seeds: list[int] = []
            for part in text.split(","):
                if "-" in part.strip("-"):
                    low, high = part.split("-")
                    seeds.extend(range(int(low), int(high) + 1))
                else:
                    seeds.append(int(part))
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = list(range(count))
    except ValueError:
        raise BenchmarkInputError(f"--seeds {text!r}: give a count (5), a list (0,3,4) or a range (5-9)") from None
    if any(seed < 0 for seed in seeds):
        raise BenchmarkInputError(f"--seeds {text!r}: seeds must be >= 0")
    return sorted(set(seeds))


def parse_hyperparams(items: list[str] | dict[str, str] | None) -> dict[str, Any]:
    """
    Parse ``key:value`` overrides as rl-zoo3's ``--hyperparams`` does (the value is evaluated as Python), except that
    a value that is not valid Python is kept as a string (``policy_loss:unclipped``).

    :param items: ``["key:value", ...]`` or ``{key: value}`` (strings)
    :return: the overrides
    :raise BenchmarkInputError: on an item without ``:``
    """
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [_split_item(item) for item in items]
    from torch import nn

    parsed = {}
    for key, text in pairs:
        try:
            parsed[key] = eval(text, {"nn": nn, "dict": dict})  # as rl-zoo3's StoreDict
        except (NameError, SyntaxError):
            parsed[key] = text
    return parsed


def _split_item(item: str) -> tuple[str, str]:
    if ":" not in item:
        raise BenchmarkInputError(f"--hyperparams {item!r}: expected key:value")
    key, text = item.split(":", 1)
    return key, text


def label_for(algo: BenchAlgo, cli_hyperparams: dict[str, str]) -> str:
    """
    :param algo: the benchmark algorithm
    :param cli_hyperparams: the command-line overrides
    :return: the name its results are filed under: the algorithm's name, plus a hash of the overrides if any
    """
    if not cli_hyperparams:
        return algo.name
    digest = hashlib.sha256(json.dumps(cli_hyperparams, sort_keys=True).encode()).hexdigest()[:8]
    return f"{algo.name}+{digest}"


def check_algorithm_available(algo: BenchAlgo) -> None:
    """
    :param algo: a benchmark algorithm
    :raise BenchmarkInputError: if its class cannot be imported
    """
    try:
        if algo.zoo_key in REFERENCE_KEYS:
            import rl_zoo3

            rl_zoo3.ALGOS[algo.zoo_key]
        else:
            from sb3_trust.zoo import ZOO_ALGOS

            ZOO_ALGOS[algo.zoo_key].load()
    except Exception as error:
        raise BenchmarkInputError(f"{algo.name}: its class cannot be imported ({type(error).__name__}: {error})") from error


def check_env_makes(env_id: str) -> None:
    """
    :param env_id: an env id
    :raise BenchmarkInputError: if the env cannot be created (e.g. mujoco or box2d missing)
    """
    import gymnasium as gym

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym.make(env_id).close()
    except Exception as error:
        raise BenchmarkInputError(f"env {env_id!r} cannot be created ({type(error).__name__}: {error})") from error


@dataclass
class Plan:
    """
    :param specs: the runs asked for
    :param manifest_name: the sweep's name (its manifest is ``sweeps/<name>.json``)
    :param expected: the run ids the sweep expects (the whole suite, whatever the ``--env``/``--algo`` filters)
    :param meta: what the manifest records besides
    """

    specs: list[RunSpec]
    manifest_name: str
    expected: list[str]
    meta: dict[str, Any]


def _check_numbers(timesteps: int | None, eval_freq: int | None, eval_episodes: int, final_eval_episodes: int) -> None:
    if timesteps is not None and timesteps < 1:
        raise BenchmarkInputError(f"--timesteps must be >= 1, got {timesteps}")
    if eval_freq is not None and eval_freq < 1:
        raise BenchmarkInputError(f"--eval-freq must be >= 1, got {eval_freq}")
    if eval_episodes < 1 or final_eval_episodes < 1:
        raise BenchmarkInputError("--eval-episodes and --final-eval-episodes must be >= 1")


def _selection(suite: str | None, envs: list[str] | None, algos: list[str] | None) -> tuple[list[str], list[str]]:
    """
    :return: the envs and algorithms the sweep expects (the whole suite, or the ones given without a suite)
    :raise BenchmarkInputError: for an unknown suite or algorithm, or an env or algorithm outside the suite
    """
    for name in algos or []:
        get_algo(name)
    if suite is None:
        if not envs or not algos:
            raise BenchmarkInputError(
                f"give --suite ({', '.join(SUITES)}), or both --env and --algo (algorithms: {', '.join(ALGOS)})"
            )
        return list(dict.fromkeys(envs)), list(dict.fromkeys(algos))
    chosen = get_suite(suite)
    for env in envs or []:
        if env not in chosen.envs:
            raise BenchmarkInputError(f"env {env!r} is not in suite {suite!r}; its envs: {', '.join(chosen.envs)}")
    for name in algos or []:
        if name not in chosen.algos:
            raise BenchmarkInputError(
                f"algorithm {name!r} is not in suite {suite!r}; its algorithms: {', '.join(chosen.algos)}"
            )
    asked = [(env, name) for env in envs or chosen.envs for name in algos or chosen.algos]
    if not any(chosen.runs(env, name) for env, name in asked):
        skipped = ", ".join(f"{name} on {env}" for env, name in chosen.skip)
        raise BenchmarkInputError(f"suite {suite!r} runs none of the runs asked for (it does not run: {skipped})")
    return list(chosen.envs), list(chosen.algos)


def _suite_budget(suite: Suite | None, env: str, timesteps: int | None) -> int | None:
    """:return: the ``--timesteps`` override, else the suite's budget on the env, else ``None`` (the yml's)"""
    if timesteps is not None or suite is None:
        return timesteps
    return suite.budget(env)


def build_plan(
    suite: str | None = None,
    envs: list[str] | None = None,
    algos: list[str] | None = None,
    seeds: list[int] | None = None,
    timesteps: int | None = None,
    cli_hyperparams: list[str] | None = None,
    eval_freq: int | None = None,
    eval_episodes: int = 10,
    final_eval_episodes: int = 20,
    check: bool = True,
) -> Plan:
    """
    Turn the command line into runs, checking every input first.

    :param suite: a suite name, or ``None`` (then ``envs`` and ``algos`` are required)
    :param envs: env ids (with a suite: a subset of its envs)
    :param algos: benchmark algorithm names (with a suite: a subset of its algorithms)
    :param seeds: the seeds (default: ``[0]``)
    :param timesteps: budget override (default: each yml entry's ``n_timesteps``)
    :param cli_hyperparams: ``key:value`` overrides for every algorithm
    :param eval_freq: evaluation period (default: :func:`default_eval_freq`)
    :param eval_episodes: episodes per evaluation
    :param final_eval_episodes: episodes of the final evaluation
    :param check: also check that the envs can be made and the classes imported
    :return: the plan
    :raise BenchmarkInputError: naming the valid choices
    """
    seeds = seeds if seeds is not None else [0]
    _check_numbers(timesteps, eval_freq, eval_episodes, final_eval_episodes)
    register_envs()
    suite_envs, suite_algos = _selection(suite, envs, algos)
    chosen = get_suite(suite) if suite is not None else None
    # (env, algorithm) pairs the sweep runs, in plan order (a suite may skip some)
    pairs = [(env, name) for env in suite_envs for name in suite_algos if chosen is None or chosen.runs(env, name)]

    run_envs = list(dict.fromkeys(envs)) if envs else suite_envs
    run_algos = list(dict.fromkeys(algos)) if algos else suite_algos

    cli = dict(_split_item(item) for item in cli_hyperparams or [])
    overrides = parse_hyperparams(cli)
    for env in suite_envs:
        check_env_registered(env)
    bench_algos = {name: get_algo(name) for name in suite_algos}
    for env, name in pairs:
        yml_entry(bench_algos[name], env, overrides)  # raises with the valid envs
    if check:
        for env in run_envs:
            check_env_makes(env)
        for name in run_algos:
            check_algorithm_available(bench_algos[name])

    driver = {"git": git_info(), "code_hash": algorithm_code_hash()["hash"], "command": sys.argv, "host": socket.gethostname()}
    specs, expected = [], []
    for seed in seeds:
        for env, name in pairs:
            algo = bench_algos[name]
            steps = budget(algo, env, overrides, _suite_budget(chosen, env, timesteps))
            spec = RunSpec(
                algo=name,
                zoo_key=algo.zoo_key,
                label=label_for(algo, cli),
                env=env,
                seed=seed,
                timesteps=steps,
                hyperparams={**algo.hyperparams, **overrides},
                cli_hyperparams=cli,
                entry=jsonable(yml_entry(algo, env, overrides)),
                eval_freq=eval_freq if eval_freq is not None else default_eval_freq(steps),
                eval_episodes=eval_episodes,
                final_eval_episodes=final_eval_episodes,
                eval_seed=seed + EVAL_SEED_OFFSET,
                driver=driver,
            )
            expected.append(spec.run_id)
            if env in run_envs and name in run_algos:
                specs.append(spec)
    name = suite or "custom"
    if timesteps is not None:
        name += f"-t{timesteps}"
    if cli:
        name += "+" + hashlib.sha256(json.dumps(cli, sort_keys=True).encode()).hexdigest()[:8]
    meta = {"suite": suite, "seeds": seeds, "timesteps": timesteps, "cli_hyperparams": cli}
    return Plan(specs=specs, manifest_name=name, expected=expected, meta=meta)


def write_manifest(results_dir: str | Path, plan: Plan) -> Path:
    """
    Record what the sweep expects, so that the report can show what is missing. Invocations with the same name
    (suite, budget override, overrides) add up: their expected runs are merged.

    :param results_dir: the results directory
    :param plan: the plan
    :return: the manifest's path
    """
    path = Path(results_dir) / "sweeps" / f"{plan.manifest_name}.json"
    old = load_record(path) or {}
    expected = sorted(set(old.get("expected", [])) | set(plan.expected))
    seeds = sorted(set(old.get("seeds", [])) | set(plan.meta["seeds"]))
    save_record(path, {**plan.meta, "name": plan.manifest_name, "seeds": seeds, "expected": expected, "updated_at": _now()})
    return path


def load_manifests(results_dir: str | Path) -> list[dict[str, Any]]:
    """
    :param results_dir: the results directory
    :return: the sweep manifests
    """
    directory = Path(results_dir) / "sweeps"
    manifests = [load_record(path) for path in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    return [manifest for manifest in manifests if manifest]


# ----------------------------------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """
    The sweep's progress display: one line per finished run, and a status line (running runs with their progress,
    counts, elapsed time and an estimate of the time left) redrawn in place on a terminal, or printed every
    ``heartbeat`` seconds otherwise.

    :param total: number of runs to do
    :param skipped: number of runs skipped (already finished)
    :param total_steps: the sum of the budgets of the runs to do
    :param stream: where to print (default: stdout)
    :param live: redraw the status line in place (default: when ``stream`` is a terminal)
    :param heartbeat: seconds between status lines when not live
    """

    def __init__(
        self,
        total: int,
        skipped: int = 0,
        total_steps: int = 0,
        stream: TextIO | None = None,
        live: bool | None = None,
        heartbeat: float = 60.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.total, self.skipped, self.total_steps = total, skipped, total_steps
        self.heartbeat = heartbeat
        self.start_time = time.monotonic()
        self.last_status = self.start_time
        self.running: dict[str, list[Any]] = {}  # run id -> [spec, start time, steps done]
        self.finished_count = self.failed_count = 0
        self.steps_finished = 0
        self.failed: list[str] = []
        self._status_shown = False

    def started(self, spec: RunSpec) -> None:
        """:param spec: a run that started"""
        self.running[spec.run_id] = [spec, time.monotonic(), 0]
        self.refresh()

    def steps(self, spec: RunSpec, steps: int) -> None:
        """
        :param spec: a running run
        :param steps: its training steps so far
        """
        if spec.run_id in self.running:
            self.running[spec.run_id][2] = steps

    def finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """
        :param spec: a run that ended
        :param record: its record
        """
        self.running.pop(spec.run_id, None)
        self.steps_finished += spec.timesteps
        done = self.finished_count + self.failed_count + 1
        head = f"[{done:>{len(str(self.total))}}/{self.total}] {spec.label:<22} {spec.env:<25} seed {spec.seed:<3}"
        if is_finished(record):
            self.finished_count += 1
            timing = record["timing"]
            speed = timing.get("steps_per_s") or 0.0
            line = (
                f"{head} ok      {record['final']['mean']:>10.1f} ± {record['final']['std']:<8.1f}"
                f" {speed:>7.0f} steps/s  {_duration(record['wall_s'])}"
            )
        else:
            self.failed_count += 1
            self.failed.append(spec.run_id)
            error = record.get("error", {})
            message = str(error.get("message", "")).strip().splitlines() or [""]
            line = f"{head} FAILED  {error.get('type', '?')}: {message[0][:200]}"
        self._print(line)
        self.refresh(force=True)

    def status(self) -> str:
        """:return: the status line"""
        elapsed = time.monotonic() - self.start_time
        steps_done = self.steps_finished + sum(entry[2] for entry in self.running.values())
        eta = ""
        if steps_done > 0 and self.total_steps > steps_done:
            eta = f", ~{_duration(elapsed * (self.total_steps - steps_done) / steps_done)} left"
        running = ", ".join(
            f"{spec.label}/{spec.env}/s{spec.seed} {min(100, 100 * steps // max(spec.timesteps, 1))}%"
            for spec, _, steps in self.running.values()
        )
        queued = self.total - self.finished_count - self.failed_count - len(self.running)
        return (
            f"  [done {self.finished_count}/{self.total}, failed {self.failed_count}, running {len(self.running)}, "
            f"queued {queued}, skipped {self.skipped} | {_duration(elapsed)} elapsed{eta}] {running}"
        )

    def refresh(self, force: bool = False) -> None:
        """
        Redraw the status line (live), or print it if ``heartbeat`` seconds have passed (not live).

        :param force: redraw now (live only)
        """
        now = time.monotonic()
        if self.live:
            if force or now - self.last_status >= 0.5:
                self._clear()
                width = 200
                with contextlib.suppress(OSError):
                    width = os.get_terminal_size(self.stream.fileno()).columns - 1
                self.stream.write(self.status()[:width])
                self.stream.flush()
                self._status_shown = True
                self.last_status = now
        elif now - self.last_status >= self.heartbeat:
            self._print(self.status())
            self.last_status = now

    def _clear(self) -> None:
        if self.live and self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False

    def _print(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Clear the status line and print the summary."""
        self._clear()
        elapsed = time.monotonic() - self.start_time
        self._print(
            f"done: {self.finished_count} finished, {self.failed_count} failed, {self.skipped} skipped "
            f"(already finished), in {_duration(elapsed)}"
        )


# ----------------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------------


def select_runs(
    plan: Plan, results_dir: str | Path, rerun_failed: bool = True, rerun_stale: bool = False
) -> tuple[list[RunSpec], list[RunSpec]]:
    """
    Split the plan into the runs to do and the runs to skip: a run is skipped when its result file holds a finished
    run (or a failed one, without ``rerun_failed``), unless it is stale and ``rerun_stale``. Leftover temporary files
    of the runs to do are removed.

    :param plan: the plan
    :param results_dir: the results directory
    :param rerun_failed: redo failed runs
    :param rerun_stale: redo finished runs whose result is stale
    :return: (to do, skipped)
    """
    todo, skipped = [], []
    current = CurrentState()
    for spec in plan.specs:
        path = result_path(results_dir, spec)
        record = load_record(path)
        if is_finished(record):
            assert record is not None
            if not (rerun_stale and staleness(record, current)):
                skipped.append(spec)
                continue
        elif record is not None and record.get("status") == "failed" and not rerun_failed:
            skipped.append(spec)
            continue
        remove_partial_files(path)
        todo.append(spec)
    return todo, skipped

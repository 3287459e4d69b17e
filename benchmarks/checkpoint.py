"""
Checkpoints of the runs in progress: a sweep stopped in the middle of a long run (the machine stopped, the sweep
killed) resumes that run from its last checkpoint instead of starting it again.

A checkpoint is one file, ``<results>/checkpoints/<run id>.pkl``, written atomically at the start of a rollout (after
an update, before the first step of the next rollout), at most once every ``seconds`` of the run's wall time. It
holds the model as SB3 saves it (weights, optimizers and every attribute the algorithm saves: schedules' progress,
adaptive coefficients, the episode-info buffer), the VecNormalize statistics, the global RNG states (Python, NumPy,
torch), the evaluation curve so far and the time spent. It is used only by the same run (same run id, yml entry,
hyperparameters, evaluation settings, algorithm code and library versions); otherwise it is deleted and the run starts
again. It is deleted when the run's result is written.

What a resumed run does that an uninterrupted one does not: its training env starts a new episode (the episode in
progress at the checkpoint ends there, its tail already bootstrapped by the value of its last observation, as a time
limit truncates an episode), and the training and evaluation envs are reseeded with ``seed + RESEED_STRIDE * k`` for
the ``k``-th resumption, so that they do not replay the episodes that followed the first seeding. The result file
lists the resumptions (``resumed``: the step, time and host of each).
"""

import contextlib
import io
import json
import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.files import remove_partial_files, write_atomically

RESEED_STRIDE = 7919
CHECKPOINT_DIR = "checkpoints"


def _same(left: Any, right: Any) -> bool:
    return json.dumps(left, sort_keys=True, default=repr) == json.dumps(right, sort_keys=True, default=repr)


class RunCheckpoint:
    """
    The checkpoint file of one run.

    :param path: the file
    :param identity: what makes a checkpoint usable by this run (compared as JSON)
    :param seconds: the least wall time between two checkpoints
    """

    def __init__(self, path: str | Path, identity: dict[str, Any], seconds: float) -> None:
        self.path = Path(path)
        self.identity = identity
        self.seconds = seconds

    def load(self) -> dict[str, Any] | None:
        """
        :return: the saved state, or ``None`` if there is no usable checkpoint (one made by another run, other code
            or other versions is deleted)
        """
        remove_partial_files(self.path)  # of a writer killed mid-write
        try:
            with open(self.path, "rb") as file:
                state = pickle.load(file)
        except FileNotFoundError:
            return None
        except Exception:  # unreadable: a checkpoint written by other versions of the libraries
            self.discard()
            return None
        if not isinstance(state, dict) or not _same(state.get("identity"), self.identity):
            self.discard()
            return None
        return state

    def save(self, model: Any, state: dict[str, Any]) -> None:
        """
        Write the checkpoint atomically (a temporary file, then a rename).

        :param model: the algorithm
        :param state: everything else to keep (see :func:`capture_rng`, the callers' fields)
        """
        buffer = io.BytesIO()
        model.save(buffer)
        data = {**state, "identity": self.identity, "model_zip": buffer.getvalue()}
        write_atomically(self.path, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))

    def discard(self) -> None:
        """Delete the checkpoint, if any."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def capture_rng() -> dict[str, Any]:
    """:return: the global RNG states of Python, NumPy and torch"""
    import torch as th

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """
    :param state: made by :func:`capture_rng`
    """
    import torch as th

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])


def restore_model(model_class: Any, state: dict[str, Any], env: Any) -> Any:
    """
    Load the checkpoint's model on ``env`` (a fresh env from the run's own set-up) and its VecNormalize statistics.

    :param model_class: the algorithm's class
    :param state: a loaded checkpoint
    :param env: the training env
    :return: the model, set to start a new episode at its next ``learn``
    """
    from stable_baselines3.common.vec_env import unwrap_vec_normalize

    model = model_class.load(io.BytesIO(state["model_zip"]), env=env, device="cpu")
    model._last_obs = None  # the env has not been reset: learn() resets it
    normalize = unwrap_vec_normalize(env)
    if normalize is not None and state.get("vec_normalize") is not None:
        normalize.obs_rms, normalize.ret_rms = state["vec_normalize"]
    return model


def vec_normalize_stats(env: Any) -> tuple[Any, Any] | None:
    """
    :param env: the training env
    :return: its VecNormalize statistics, or ``None`` without VecNormalize
    """
    from stable_baselines3.common.vec_env import unwrap_vec_normalize

    normalize = unwrap_vec_normalize(env)
    return None if normalize is None else (normalize.obs_rms, normalize.ret_rms)


def make_checkpoint_callback(checkpoint: RunCheckpoint, get_state: Any) -> Any:
    """
    :param checkpoint: the run's checkpoint
    :param get_state: called with the model when a checkpoint is due: the state to save besides the model
    :return: the callback that saves the checkpoint at the start of a rollout, at most every ``checkpoint.seconds``
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class CheckpointCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last_time = time.monotonic()
            self.last_steps = -1

        def _on_training_start(self) -> None:
            self.last_time = time.monotonic()
            self.last_steps = self.model.num_timesteps

        def _on_rollout_start(self) -> None:
            steps = self.model.num_timesteps
            if steps > self.last_steps and time.monotonic() - self.last_time >= checkpoint.seconds:
                checkpoint.save(self.model, get_state(self.model))
                self.last_time = time.monotonic()
                self.last_steps = steps

        def _on_step(self) -> bool:
            return True

    return CheckpointCallback()

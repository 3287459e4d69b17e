"""
Guards that keep a model consistent when something goes wrong: non-finite numbers in a rollout or an update,
interrupted updates, and model files that are not what they claim to be.
"""

import copy
import dataclasses
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from sb3_trust.common.messages import warn

NON_FINITE_ACTIONS = ("raise", "skip")

# The rollout arrays, in the order a fault propagates: observations and rewards come from the env, the rest from them
_ROLLOUT_FIELDS = (
    ("observations", "observation"),
    ("rewards", "reward"),
    ("actions", "action"),
    ("values", "value prediction"),
    ("log_probs", "log-probability"),
    ("advantages", "advantage"),
    ("returns", "return"),
)


class NonFiniteError(FloatingPointError):
    """A NaN or infinite number appeared in a rollout or an update. The weights from before the update are kept."""


class FiniteObservations(VecEnvWrapper):
    """
    Stops collection with a ``NonFiniteError`` naming the step, the env and the timestep when the env returns a NaN or
    infinite observation: the policy cannot act on it (SB3's distributions would fail with a less helpful
    ``ValueError``), so not even ``on_non_finite="skip"`` can skip it. Wraps the VecEnv for the duration of one
    ``collect_rollouts``.

    :param venv: the training VecEnv
    :param algo: the algorithm (for ``num_timesteps``)
    """

    def __init__(self, venv: VecEnv, algo: Any) -> None:
        super().__init__(venv)
        self.algo = algo

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        arrays = obs.items() if isinstance(obs, dict) else [(None, obs)]
        for key, array in arrays:
            array = np.asarray(array)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                env, *_ = np.argwhere(~np.isfinite(array))[0]
                name = "observation" if key is None else f"observation '{key}'"
                bad = array[np.unravel_index(np.argmax(~np.isfinite(array)), array.shape)]
                raise NonFiniteError(
                    f"{type(self.algo).__name__}: non-finite {name} ({bad}) from env {env} at timestep "
                    f"{self.algo.num_timesteps + self.num_envs}; the policy cannot act on it, training stops here "
                    "(the weights from before are kept)"
                )
        return obs, rewards, dones, infos


def find_non_finite_in_rollout(rollout_buffer: RolloutBuffer, num_timesteps: int) -> str | None:
    """
    Look for NaN/inf in a full rollout buffer (before ``get()`` flattens it).

    :param rollout_buffer: the rollout buffer
    :param num_timesteps: the algorithm's ``num_timesteps`` at the end of the rollout
    :return: a description of the first non-finite quantity (name, value, step, env, timestep), or ``None``
    """
    n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
    first_timestep = num_timesteps - n_steps * n_envs
    for field, label in _ROLLOUT_FIELDS:
        arrays = rollout_buffer.__dict__[field]
        items = arrays.items() if isinstance(arrays, dict) else [(None, arrays)]
        for key, array in items:
            array = np.asarray(array)
            if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
                continue
            index = np.argwhere(~np.isfinite(array))[0]
            if rollout_buffer.generator_ready:  # already flattened: [n_steps * n_envs, ...], env-major
                env, step = divmod(int(index[0]), n_steps)
            else:
                step, env = int(index[0]), int(index[1])
            name = label if key is None else f"{label} '{key}'"
            return (
                f"non-finite {name} ({array[tuple(index)]}) at rollout step {step} of env {env} "
                f"(timestep {first_timestep + step * n_envs + env})"
            )
    return None


def _clone_state(state: Any) -> Any:
    """A deep copy of an optimizer ``state_dict()`` (nested dicts and lists of tensors and plain values), cheaper than
    ``copy.deepcopy``."""
    if isinstance(state, th.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: _clone_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_clone_state(value) for value in state)
    return copy.copy(state)


class UpdateSnapshot:
    """
    A copy of what an update changes (policy parameters and buffers, optimizer state, extra attributes), to restore
    it exactly if the update fails or is interrupted.

    :param policy: the policy
    :param owner: the algorithm, whose ``attributes`` are saved too
    :param attributes: names of plain attributes of ``owner`` (counters, coefficients)
    """

    def __init__(self, policy: BasePolicy, owner: Any, attributes: tuple[str, ...] = ()) -> None:
        self.policy = policy
        self.owner = owner
        self.state = {name: value.detach().clone() for name, value in policy.state_dict().items()}
        self.optimizer_state = _clone_state(policy.optimizer.state_dict())
        self.attributes = {name: copy.deepcopy(getattr(owner, name)) for name in attributes}

    def restore(self) -> None:
        with th.no_grad():
            self.policy.load_state_dict(self.state)
        self.policy.optimizer.load_state_dict(self.optimizer_state)
        for name, value in self.attributes.items():
            setattr(self.owner, name, value)


def all_finite(tensors: list[th.Tensor]) -> bool:
    """
    :param tensors: tensors (e.g. the parameters)
    :return: whether every element of every tensor is finite
    """
    return all(bool(th.isfinite(tensor).all()) for tensor in tensors)


@dataclasses.dataclass(frozen=True)
class ForeignFormat:
    """
    A model file of another library that one of our algorithms reads as its own.

    :param name: the other library's algorithm, for messages (``"stable_baselines3.PPO"``)
    :param signature: the attributes that only that algorithm saves (among SB3's on-policy algorithms)
    :param settings: our keywords that reproduce its updates (applied at load, unless given to ``load()``)
    """

    name: str
    signature: frozenset[str]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def matches(self, data: Mapping[str, Any]) -> bool:
        """:return: whether the file's ``data`` was saved by that algorithm (its attributes, SB3's policy classes)"""
        policy_module = data.get("policy_class", {}).get("__module__") if isinstance(data.get("policy_class"), dict) else None
        return self.signature <= data.keys() and policy_module == "stable_baselines3.common.policies"


def check_saved_model(path: Any, family: str, cls_name: str, foreign: Sequence[ForeignFormat] = ()) -> ForeignFormat | None:
    """
    Check, before SB3's ``load()`` builds anything, that ``path`` is a readable model file saved by ``family``, or by
    one of the ``foreign`` algorithms whose files it reads.

    :param path: a path (``.zip`` may be omitted, as in SB3) or a file object
    :param family: the value of ``_trust_algorithm`` the file must have (``"TrustPPO"`` or ``"TrustTRPO"``)
    :param cls_name: the class ``load()`` was called on, for the message
    :param foreign: the other libraries' algorithms whose files ``cls_name`` reads
    :return: the foreign format of the file, or ``None`` for our own file
    :raises ValueError: when the file is unreadable, truncated or corrupted, or was saved by another algorithm
    """
    source = path
    if isinstance(path, (str, pathlib.Path)) and not os.path.exists(path) and os.path.exists(f"{path}.zip"):
        source = f"{path}.zip"
    try:
        if isinstance(source, io.IOBase):
            position = source.tell()
        with zipfile.ZipFile(source) as archive:
            data = json.loads(archive.read("data").decode())
            corrupted = archive.testzip()
            if corrupted is not None:
                raise zipfile.BadZipFile(f"bad CRC for {corrupted}")
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot load {path!r}: not a readable SB3 model file (truncated or corrupted?): {error}") from error
    finally:
        if isinstance(source, io.IOBase):
            source.seek(position)
    saved_by = data.get("_trust_algorithm")
    if saved_by == family:
        return None
    if saved_by is None:
        for other in foreign:
            if other.matches(data):
                return other
    origin = f"{saved_by}" if saved_by is not None else "another library's algorithm (not sb3_trust)"
    readable = "".join(f" or by {other.name}" for other in foreign)
    raise ValueError(
        f"Cannot load {path!r} with {cls_name}.load(): the file was saved by {origin}, not by {family}{readable}. "
        f"Load it with the class that saved it."
    )


def handle_non_finite(algo: Any, problem: str) -> None:
    """
    Apply ``algo.on_non_finite`` to a non-finite problem found before or during an update (whose effects are undone).

    :param algo: the algorithm
    :param problem: what went non-finite, and where
    :raises NonFiniteError: with ``on_non_finite="raise"``
    """
    name = type(algo).__name__
    message = f"{problem}; the update was not applied (weights and optimizer state from before it are kept)"
    if algo.on_non_finite == "raise":
        raise NonFiniteError(f"{name}: {message}. Pass on_non_finite='skip' to skip such updates.")
    algo._n_skipped_updates += 1
    warn(
        f"{name}: {message}; skipped ({algo._n_skipped_updates} so far, see `train/skipped_updates`). "
        "on_non_finite='raise' stops at the first one instead"
    )
    algo.logger.record("train/skipped_updates", algo._n_skipped_updates)


def guarded_update(algo: Any, update: Callable[[], None], attributes: tuple[str, ...]) -> None:
    """
    Run one update so that nothing is lost when it fails: check the rollout for NaN/inf first, snapshot what the
    update changes, and restore the snapshot if the update raises ``NonFiniteError`` (then apply ``on_non_finite``)
    or anything else, ``KeyboardInterrupt`` included (then re-raise).

    :param algo: the algorithm (its ``policy``, ``rollout_buffer``, ``num_timesteps``, ``on_non_finite``)
    :param update: the update itself
    :param attributes: the algorithm's plain attributes the update changes (counters, coefficients)
    """
    problem = find_non_finite_in_rollout(algo.rollout_buffer, algo.num_timesteps)
    if problem is not None:
        handle_non_finite(algo, problem)
        return
    snapshot = UpdateSnapshot(algo.policy, algo, attributes)
    try:
        update()
    except NonFiniteError as error:
        snapshot.restore()
        handle_non_finite(algo, str(error))
    except BaseException:
        snapshot.restore()
        raise

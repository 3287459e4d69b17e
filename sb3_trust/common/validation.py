"""
Hyperparameter checks shared by the algorithms.

Every check raises ``ValueError`` (bad value) or ``TypeError`` (bad type) naming the parameter, the value given and
what is allowed, so that a wrong setting fails in the constructor, before any training starts.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

from gymnasium import spaces

from sb3_trust.common.messages import warn

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_schedule: bool = False,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    """
    Check that ``value`` is a finite number in the given interval (or, if allowed, a schedule or ``None``).
    A schedule is only checked for being callable: its values are checked when it is evaluated.

    :param name: the parameter's name, used in the message
    :param value: the value given
    :param low: lower bound (``None``: unbounded)
    :param high: upper bound (``None``: unbounded)
    :param low_inclusive: whether ``low`` itself is allowed
    :param high_inclusive: whether ``high`` itself is allowed
    :param allow_schedule: accept a callable ``progress_remaining -> value``
    :param allow_none: accept ``None``
    :param integer: require an ``int``
    """
    if value is None and allow_none:
        return
    if allow_schedule and callable(value):
        return
    if integer:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int, got {value!r} ({type(value).__name__})")
    elif not _is_number(value):
        allowed = "a number" + (" or a schedule" if allow_schedule else "") + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    too_low = low is not None and (value < low or (value == low and not low_inclusive))
    too_high = high is not None and (value > high or (value == high and not high_inclusive))
    if too_low or too_high:
        left = "-inf" if low is None else f"{low}"
        right = "inf" if high is None else f"{high}"
        interval = ("[" if low_inclusive and low is not None else "(") + f"{left}, {right}"
        interval += "]" if high_inclusive and high is not None else ")"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}")


def check_schedule_value(name: str, value: float, *, low: float = 0.0, low_inclusive: bool = True) -> float:
    """
    Check the value a schedule returned for the current progress (schedules are only evaluated during training).
    Annealed values may reach 0 at the end of training (as rl-zoo3's ``lin_0.2`` does), so 0 is allowed by default.

    :param name: the parameter's name
    :param value: what the schedule returned
    :param low: lower bound
    :param low_inclusive: whether ``low`` itself is allowed
    :return: ``value`` as a float
    """
    check_number(name, value, low=low, low_inclusive=low_inclusive)
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """
    :param name: the parameter's name
    :param value: the value given
    :param choices: the allowed strings
    """
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {choices}, got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r} ({type(value).__name__})")


def check_action_space(action_space: spaces.Space, algo_name: str) -> None:
    """
    :param action_space: the env's action space
    :param algo_name: used in the message
    """
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES):
        allowed = ", ".join(cls.__name__ for cls in SUPPORTED_ACTION_SPACES)
        raise TypeError(f"{algo_name} does not support the action space {action_space} (env): allowed are {allowed}")


def check_rollout_sizes(
    n_steps: int, n_envs: int, batch_size: int | None, normalize_advantage: bool, minibatch_advantages: bool = True
) -> None:
    """
    The rollout-size checks of SB3 PPO and sb3-contrib TRPO, as ``ValueError`` instead of ``assert``:
    ``n_steps * n_envs`` must exceed 1 when advantages are normalised (otherwise their std is NaN). A ``batch_size``
    that does not divide the rollout, or exceeds it (SB3 then trains on the whole rollout as one minibatch; rl-zoo3's
    configs rely on it), only warns, with SB3's message. Refused, because it would train on NaN: a truncated last
    minibatch of one sample when advantages are normalised per minibatch.

    :param n_steps: steps per env per rollout
    :param n_envs: number of envs
    :param batch_size: minibatch size
    :param normalize_advantage: whether advantages are normalised
    :param minibatch_advantages: whether they are normalised per minibatch (PPO) rather than over the rollout (TRPO)
    """
    buffer_size = n_steps * n_envs
    if normalize_advantage and buffer_size < 2:
        raise ValueError(
            f"`n_steps * n_envs` must be at least 2 when `normalize_advantage=True`, got n_steps={n_steps} and "
            f"n_envs={n_envs} (see https://github.com/DLR-RM/stable-baselines3/issues/440)"
        )
    if batch_size is None:
        return
    if normalize_advantage and minibatch_advantages and batch_size < buffer_size and buffer_size % batch_size == 1:
        raise ValueError(
            f"`batch_size={batch_size}` leaves a last minibatch of 1 sample from the n_steps * n_envs = {n_steps} * "
            f"{n_envs} = {buffer_size} of a rollout: with `normalize_advantage=True` its advantage's std is NaN. "
            "Choose a batch size that does not leave a remainder of 1."
        )
    if buffer_size % batch_size > 0:
        warn(
            f"You have specified a mini-batch size of {batch_size},"
            f" but because the `RolloutBuffer` is of size `n_steps * n_envs = {buffer_size}`,"
            f" after every {buffer_size // batch_size} untruncated mini-batches,"
            f" there will be a truncated mini-batch of size {buffer_size % batch_size}\n"
            f"We recommend using a `batch_size` that is a factor of `n_steps * n_envs`.\n"
            f"Info: (n_steps={n_steps} and n_envs={n_envs})"
        )


def check_common_on_policy_kwargs(given: Mapping[str, Any]) -> None:
    """
    Checks of the keywords that TrustPPO and TrustTRPO share: those of every SB3 on-policy algorithm, and ours
    (``on_non_finite``, ``backend``, ``use_masking``, the reference-policy keywords).

    :param given: the keywords given to the constructor (its ``locals()``)
    """
    from sb3_trust.common.reference import check_reference_kwargs
    from sb3_trust.common.safety import NON_FINITE_ACTIONS

    check_number("learning_rate", given["learning_rate"], low=0.0, allow_schedule=True)
    check_number("n_steps", given["n_steps"], low=1, integer=True)
    check_number("batch_size", given["batch_size"], low=1, integer=True, allow_none=given["batch_size"] is None)
    check_number("gamma", given["gamma"], low=0.0, high=1.0)
    check_number("gae_lambda", given["gae_lambda"], low=0.0, high=1.0)
    check_bool("normalize_advantage", given["normalize_advantage"])
    check_bool("use_sde", given["use_sde"])
    check_number("sde_sample_freq", given["sde_sample_freq"], low=-1, integer=True)
    check_number("stats_window_size", given["stats_window_size"], low=1, integer=True)
    rollout_buffer_kwargs = given["rollout_buffer_kwargs"]
    if rollout_buffer_kwargs is not None and not isinstance(rollout_buffer_kwargs, dict):
        raise TypeError(f"`rollout_buffer_kwargs` must be a dict or None, got {rollout_buffer_kwargs!r}")
    check_choice("on_non_finite", given["on_non_finite"], NON_FINITE_ACTIONS)
    check_backend(given["backend"])
    if given["use_masking"] not in (True, False, "auto") or not isinstance(given["use_masking"], (bool, str)):
        raise ValueError(f"`use_masking` must be True, False or 'auto', got {given['use_masking']!r}")
    check_reference_kwargs(given)


def check_backend(backend: Any) -> None:
    """
    :param backend: ``"auto"`` (the accelerator where it can run, the reference path elsewhere), ``"reference"`` or
        ``"accelerated"`` (an error where the accelerator cannot run)
    """
    check_choice("backend", backend, ("auto", "reference", "accelerated"))

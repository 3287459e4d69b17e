"""
Read rl-zoo3 hyperparameter entries (rl-zoo3's own ``ppo.yml``/``trpo.yml``, or ours) into model keyword arguments.

This mirrors the part of rl-zoo3's ``ExperimentManager`` preprocessing that the benchmark envs use: ``lin_X`` strings
become linear schedules, ``policy_kwargs`` strings are evaluated, and the zoo-only keys are split off.
"""

import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from torch import nn

from sb3_trust import linear_schedule

SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
ZOO_ONLY_KEYS = ("n_envs", "n_timesteps", "normalize", "normalize_kwargs", "policy", "env_wrapper", "frame_stack", "callback")


@dataclass
class ZooConfig:
    """
    :param env_id: the env id
    :param n_envs: number of envs
    :param n_timesteps: training budget
    :param policy: policy name
    :param normalize: VecNormalize keyword arguments, or ``None`` without normalisation
    :param kwargs: the algorithm's keyword arguments
    """

    env_id: str
    n_envs: int
    n_timesteps: int
    policy: str
    normalize: dict[str, Any] | None
    kwargs: dict[str, Any] = field(default_factory=dict)


def zoo_yml_path(algo: str) -> str:
    """
    :param algo: ``ppo``/``trpo`` (rl-zoo3's files) or one of our keys (``trust_ppo``, ...)
    :return: path of the yml file
    """
    if algo in ("ppo", "trpo"):
        import rl_zoo3

        return os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", f"{algo}.yml")
    import sb3_trust

    return os.path.join(os.path.dirname(sb3_trust.__file__), "hyperparams", f"{algo}.yml")


def load_zoo_config(algo: str, env_id: str) -> ZooConfig:
    """
    :param algo: ``ppo``/``trpo`` or one of our zoo keys
    :param env_id: the env id (its entry must exist in the yml)
    :return: the parsed entry
    """
    with open(zoo_yml_path(algo)) as file:
        entries = yaml.load(file, Loader=yaml.UnsafeLoader)  # rl-zoo3 files use !!float tags
    if env_id not in entries:
        raise KeyError(f"no entry for {env_id!r} in {zoo_yml_path(algo)}")
    entry = dict(entries[env_id])
    kwargs = {key: value for key, value in entry.items() if key not in ZOO_ONLY_KEYS}
    for key in SCHEDULE_KEYS:
        if isinstance(kwargs.get(key), str) and kwargs[key].startswith("lin_"):
            kwargs[key] = linear_schedule(float(kwargs[key][len("lin_") :]))
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = eval(kwargs["policy_kwargs"], {"dict": dict, "nn": nn})  # as rl-zoo3 does
    normalize = entry.get("normalize", False)
    if isinstance(normalize, str):
        normalize = eval(normalize)
    normalize_kwargs = normalize if isinstance(normalize, dict) else ({} if normalize else None)
    if normalize_kwargs is not None and "gamma" in kwargs:
        normalize_kwargs.setdefault("gamma", kwargs["gamma"])  # as rl-zoo3 does
    return ZooConfig(
        env_id=env_id,
        n_envs=int(entry.get("n_envs", 1)),
        n_timesteps=int(entry["n_timesteps"]),
        policy=entry.get("policy", "MlpPolicy"),
        normalize=normalize_kwargs,
        kwargs=kwargs,
    )

"""
Optuna samplers for ``--optimize`` (rl-zoo3's ``HYPERPARAMS_SAMPLER``) and the matching converters
(``HYPERPARAMS_CONVERTER``, used by ``--trial-id`` to turn a stored trial's parameters back into hyperparameters).

Each key keeps its variant fixed (the key names a variant: its log folder and its yml) and searches:

- the search space of rl-zoo3's own sampler for the base algorithm: ``trust_ppo`` calls rl-zoo3's
  ``sample_ppo_params`` unchanged, so ``--algo trust_ppo --optimize`` and ``--algo ppo --optimize`` search the same
  space, plus our knobs; the KL keys use the same ranges without ``clip_range``, which their loss does not use;
  ``trust_trpo`` and ``trust_npg`` call ``sample_trpo_params``;
- and the knobs of the variant:

  ====================== =====================================================================================
  key                    extra parameters searched
  ====================== =====================================================================================
  trust_ppo              ``target_kl`` (SB3 early stopping, or None), value clipping
  trust_ppo_kl           ``adaptive_kl_target`` (d_targ), ``kl_coef`` (initial β), value clipping
  trust_ppo_kl_fixed     ``kl_coef`` (fixed β), value clipping
  trust_ppo_dual_clip    as ``trust_ppo``, and ``dual_clip`` (c)
  trust_ppo_clip_higher  as ``trust_ppo``, and ``clip_range_high`` (ε_high; ε_low is the searched ``clip_range``)
  trust_ppo_spo          as ``trust_ppo``: SPO's ε is the searched ``clip_range``
  trust_ppo_adaptive_lr  as ``trust_ppo``, and ``adaptive_lr_kl_target`` (``learning_rate`` is the initial value)
  trust_ppo_vf_lr        as ``trust_ppo``, and ``vf_learning_rate``
  trust_ppo_proj_<p>     as ``trust_ppo``, and ``projection_mean_bound`` (ε_μ), ``projection_cov_bound`` (ε_Σ),
                         ``projection_coef`` (α); ``clip_range`` is searched but unused (the loss is unclipped)
  trust_trpo/npg         ``kl_convention`` ("paper" or "contrib")
  ====================== =====================================================================================

  Value clipping: ``clip_range_vf`` (None, i.e. off, or a value) and, when on, ``vf_clip_mode`` ("sb3" or "max").

``ppo_mask`` (sb3-contrib's ``MaskablePPO``, a reference, not ours) uses rl-zoo3's ``sample_ppo_params`` and
``convert_onpolicy_params`` unchanged, as rl-zoo3's ``ppo`` key does.

The optuna parameter names of our knobs are the keyword names, so rl-zoo3's ``convert_onpolicy_params`` passes
them through unchanged; ``convert_trust_params`` (the converter of every key) adds ``vf_clip_mode: sb3`` when value
clipping is off, as the samplers do.

``batch_size`` is capped at the rollout size ``n_steps * n_envs``: rl-zoo3's ranges allow larger ones (SB3 PPO then
trains on the whole rollout at once, with a warning), which TrustPPO and TrustTRPO reject.
"""

import functools
from collections.abc import Callable
from typing import Any

import optuna
from rl_zoo3.hyperparams_opt import convert_onpolicy_params, sample_ppo_params, sample_trpo_params

__all__ = [
    "CONVERTERS",
    "SAMPLERS",
    "convert_trust_params",
    "sample_trust_npg_params",
    "sample_trust_ppo_kl_fixed_params",
    "sample_trust_ppo_kl_params",
    "sample_trust_ppo_params",
    "sample_trust_ppo_variant_params",
    "sample_trust_trpo_params",
]

# Choices of the value-clipping range. It is in the units of the value function (i.e. of the returns), so it depends
# on the reward scale: the small values suit normalized rewards (`normalize: true`), as in Baselines' PPO (0.2).
CLIP_RANGE_VF_CHOICES = [None, 0.1, 0.2, 0.5, 1.0, 10.0]


def convert_trust_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Turn a trial's parameters (as optuna stores them) into hyperparameters: rl-zoo3's ``convert_onpolicy_params``
    (``*_pow``, ``one_minus_*``, ``net_arch`` and ``activation_fn`` into ``policy_kwargs``), our knobs unchanged.

    :param sampled_params: the trial's parameters
    :return: the hyperparameters
    """
    hyperparams = convert_onpolicy_params(sampled_params)
    if "clip_range_vf" in hyperparams and hyperparams["clip_range_vf"] is None:
        hyperparams.setdefault("vf_clip_mode", "sb3")
    return hyperparams


def _cap_batch_size(hyperparams: dict[str, Any], trial: optuna.Trial, n_envs: int) -> dict[str, Any]:
    """
    Cap ``batch_size`` at the rollout size ``n_steps * n_envs`` (and record the value used in the trial's attributes).

    :param hyperparams: sampled hyperparameters, with ``n_steps`` and ``batch_size``
    :param trial: the optuna trial
    :param n_envs: number of training envs
    :return: ``hyperparams``, changed in place
    """
    if "batch_size" in hyperparams and "n_steps" in hyperparams:
        hyperparams["batch_size"] = min(hyperparams["batch_size"], hyperparams["n_steps"] * n_envs)
        trial.set_user_attr("batch_size", hyperparams["batch_size"])
    return hyperparams


def _sample_value_clipping(trial: optuna.Trial) -> dict[str, Any]:
    """
    :param trial: the optuna trial
    :return: ``clip_range_vf`` (None: no value clipping) and, when it is set, ``vf_clip_mode``
    """
    clip_range_vf = trial.suggest_categorical("clip_range_vf", CLIP_RANGE_VF_CHOICES)
    if clip_range_vf is None:
        return {"clip_range_vf": None, "vf_clip_mode": "sb3"}
    return {"clip_range_vf": clip_range_vf, "vf_clip_mode": trial.suggest_categorical("vf_clip_mode", ["sb3", "max"])}


def _sample_ppo_without_clip_range(trial: optuna.Trial) -> dict[str, Any]:
    """
    rl-zoo3's ``sample_ppo_params`` search space (same names and ranges) without ``clip_range``.

    :param trial: the optuna trial
    :return: the sampled parameters, as optuna names them (before ``convert_onpolicy_params``)
    """
    batch_size_pow = trial.suggest_int("batch_size_pow", 2, 10)
    n_steps_pow = trial.suggest_int("n_steps_pow", 5, 12)
    one_minus_gamma = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    trial.set_user_attr("gamma", 1 - one_minus_gamma)
    trial.set_user_attr("n_steps", 2**n_steps_pow)
    trial.set_user_attr("batch_size", 2**batch_size_pow)
    return {
        "batch_size_pow": batch_size_pow,
        "n_steps_pow": n_steps_pow,
        "one_minus_gamma": one_minus_gamma,
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.002, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 0.00000001, 0.1, log=True),
        "n_epochs": trial.suggest_categorical("n_epochs", [1, 5, 10, 20]),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 2),
        "net_arch": trial.suggest_categorical("net_arch", ["tiny", "small", "medium"]),
        "activation_fn": trial.suggest_categorical("activation_fn", ["tanh", "relu"]),
    }


def sample_trust_ppo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for ``trust_ppo`` (PPO-clip): rl-zoo3's PPO search space, the SB3 early-stopping threshold ``target_kl``
    and the value clipping.

    :param trial: the optuna trial
    :param n_actions: number of actions (unused, rl-zoo3's sampler signature)
    :param n_envs: number of training envs
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: the hyperparameters of the trial
    """
    hyperparams = sample_ppo_params(trial, n_actions, n_envs, additional_args)
    hyperparams["target_kl"] = trial.suggest_categorical("target_kl", [None, 0.01, 0.02, 0.05])
    hyperparams.update(_sample_value_clipping(trial))
    return _cap_batch_size(hyperparams, trial, n_envs)


def sample_trust_ppo_kl_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for ``trust_ppo_kl`` (adaptive KL penalty): rl-zoo3's PPO search space without ``clip_range``, the target
    KL d_targ (around the PPO paper's {0.003, 0.01, 0.03}), the initial β and the value clipping.

    :param trial: the optuna trial
    :param n_actions: number of actions (unused, rl-zoo3's sampler signature)
    :param n_envs: number of training envs
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: the hyperparameters of the trial
    """
    sampled = _sample_ppo_without_clip_range(trial)
    sampled["adaptive_kl_target"] = trial.suggest_float("adaptive_kl_target", 0.001, 0.1, log=True)
    sampled["kl_coef"] = trial.suggest_categorical("kl_coef", [0.1, 0.3, 1.0, 3.0, 10.0])
    hyperparams = convert_onpolicy_params(sampled)
    hyperparams.update(_sample_value_clipping(trial))
    return _cap_batch_size(hyperparams, trial, n_envs)


def sample_trust_ppo_kl_fixed_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict
) -> dict[str, Any]:
    """
    Sampler for ``trust_ppo_kl_fixed`` (fixed KL penalty): rl-zoo3's PPO search space without ``clip_range``, the
    fixed β (the PPO paper tried 0.3 to 10) and the value clipping.

    :param trial: the optuna trial
    :param n_actions: number of actions (unused, rl-zoo3's sampler signature)
    :param n_envs: number of training envs
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: the hyperparameters of the trial
    """
    sampled = _sample_ppo_without_clip_range(trial)
    sampled["kl_coef"] = trial.suggest_float("kl_coef", 0.03, 30.0, log=True)
    hyperparams = convert_onpolicy_params(sampled)
    hyperparams.update(_sample_value_clipping(trial))
    return _cap_batch_size(hyperparams, trial, n_envs)


def _sample_projection(trial: optuna.Trial) -> dict[str, Any]:
    """:return: the bounds and the regression coefficient of a projection key (around the paper's 0.03, 0.001, 8)"""
    return {
        "projection_mean_bound": trial.suggest_float("projection_mean_bound", 0.003, 0.3, log=True),
        "projection_cov_bound": trial.suggest_float("projection_cov_bound", 1e-4, 0.01, log=True),
        "projection_coef": trial.suggest_categorical("projection_coef", [0.0, 1.0, 4.0, 8.0, 16.0, 32.0]),
    }


# The extra dimension of each PPO variant's key (the optuna name is the keyword, so the converter passes it through)
VARIANT_DIMENSIONS: dict[str, Callable[[optuna.Trial], Any]] = {
    "trust_ppo_dual_clip": lambda trial: {"dual_clip": trial.suggest_categorical("dual_clip", [1.5, 2.0, 3.0, 5.0, 10.0])},
    "trust_ppo_clip_higher": lambda trial: {
        "clip_range_high": trial.suggest_categorical("clip_range_high", [0.1, 0.2, 0.28, 0.3, 0.4, 0.5])
    },
    "trust_ppo_spo": lambda trial: {},
    "trust_ppo_adaptive_lr": lambda trial: {
        "adaptive_lr_kl_target": trial.suggest_float("adaptive_lr_kl_target", 0.002, 0.05, log=True)
    },
    "trust_ppo_vf_lr": lambda trial: {"vf_learning_rate": trial.suggest_float("vf_learning_rate", 1e-5, 0.01, log=True)},
    **dict.fromkeys((f"trust_ppo_proj_{name}" for name in ("frobenius", "w2", "kl")), _sample_projection),
}


def sample_trust_ppo_variant_params(
    key: str, trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict
) -> dict[str, Any]:
    """
    Sampler for the keys of ``VARIANT_DIMENSIONS``: the ``trust_ppo`` space and the variant's own dimension.

    :param key: the key (bound with ``functools.partial``); the other parameters: as ``sample_trust_ppo_params``
    :return: the hyperparameters of the trial
    """
    hyperparams = sample_trust_ppo_params(trial, n_actions, n_envs, additional_args)
    hyperparams.update(VARIANT_DIMENSIONS[key](trial))
    return hyperparams


def sample_trust_trpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for ``trust_trpo``: rl-zoo3's TRPO search space (``target_kl`` is the trust-region radius δ there) and
    the KL convention, which decides what δ bounds (the mean KL summed or averaged over action dimensions).

    :param trial: the optuna trial
    :param n_actions: number of actions (unused, rl-zoo3's sampler signature)
    :param n_envs: number of training envs
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: the hyperparameters of the trial
    """
    hyperparams = sample_trpo_params(trial, n_actions, n_envs, additional_args)
    hyperparams["kl_convention"] = trial.suggest_categorical("kl_convention", ["paper", "contrib"])
    return _cap_batch_size(hyperparams, trial, n_envs)


def sample_trust_npg_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for ``trust_npg``: the same space as ``trust_trpo`` (rl-zoo3's TRPO sampler searches no line-search
    parameter, so nothing is left out); ``target_kl`` is NPG's step size δ.

    :param trial: the optuna trial
    :param n_actions: number of actions (unused, rl-zoo3's sampler signature)
    :param n_envs: number of training envs
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: the hyperparameters of the trial
    """
    return sample_trust_trpo_params(trial, n_actions, n_envs, additional_args)


SAMPLERS = {
    "trust_ppo": sample_trust_ppo_params,
    "trust_ppo_kl": sample_trust_ppo_kl_params,
    "trust_ppo_kl_fixed": sample_trust_ppo_kl_fixed_params,
    **{key: functools.partial(sample_trust_ppo_variant_params, key) for key in VARIANT_DIMENSIONS},
    "trust_trpo": sample_trust_trpo_params,
    "trust_npg": sample_trust_npg_params,
}

CONVERTERS = dict.fromkeys(SAMPLERS, convert_trust_params)

# The masking reference: rl-zoo3's PPO search space and converter, as for its own `ppo` key
SAMPLERS["ppo_mask"] = sample_ppo_params
CONVERTERS["ppo_mask"] = convert_onpolicy_params

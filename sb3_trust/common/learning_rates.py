"""
Learning rates beyond SB3's single schedule: the KL-adaptive learning rate (rl_games, RSL-RL / Isaac Lab's
``schedule="adaptive"``) and a separate learning rate for the value function (two parameter groups).
"""

from dataclasses import dataclass
from typing import Any

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trust.common.validation import check_schedule_value


@dataclass(frozen=True)
class AdaptiveLearningRate:
    """
    The KL-adaptive learning rate of rl_games and RSL-RL (``schedule="adaptive"``): after each update,
    ``lr ← max(low, lr / factor)`` if KL > 2·target, ``lr ← min(high, lr · factor)`` if KL < target / 2, else unchanged.

    :param kl_target: the target KL
    :param low: the smallest learning rate
    :param high: the largest learning rate
    :param factor: the multiplicative step (RSL-RL: 1.5)
    """

    kl_target: float
    low: float = 1e-5
    high: float = 1e-2
    factor: float = 1.5

    def update(self, learning_rate: float, kl: float) -> float:
        """
        :param learning_rate: the current learning rate
        :param kl: the KL(π_old ‖ π_new) of the update just done
        :return: the next learning rate
        """
        if kl > 2.0 * self.kl_target:
            return max(self.low, learning_rate / self.factor)
        if kl < self.kl_target / 2.0:
            return min(self.high, learning_rate * self.factor)
        return learning_rate


def critic_parameters(policy: ActorCriticPolicy) -> list[th.nn.Parameter]:
    """
    :param policy: an actor-critic policy
    :return: the parameters only the value function uses: ``mlp_extractor.value_net``, ``value_net`` and, when the
        features extractor is not shared, ``vf_features_extractor`` (a shared extractor belongs to the actor's group)
    """
    modules: list[th.nn.Module] = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        modules.append(policy.vf_features_extractor)
    return [param for module in modules for param in module.parameters()]


def split_optimizer(policy: ActorCriticPolicy, learning_rate: float, vf_learning_rate: float) -> th.optim.Optimizer:
    """
    Replace the policy's optimizer by one of the same class and keywords with two parameter groups: the actor (and a
    shared features extractor) first, the critic second. Parameters keep ``policy.parameters()``'s order in each group.

    :param policy: an actor-critic policy (its ``optimizer_class`` and ``optimizer_kwargs``)
    :param learning_rate: the actor group's initial learning rate
    :param vf_learning_rate: the critic group's initial learning rate
    :return: the new optimizer, also set as ``policy.optimizer``
    """
    critic = {id(param) for param in critic_parameters(policy)}
    actor = [param for param in policy.parameters() if id(param) not in critic]
    groups: list[dict[str, Any]] = [
        {"params": actor, "lr": learning_rate},
        {"params": [param for param in policy.parameters() if id(param) in critic], "lr": vf_learning_rate},
    ]
    policy.optimizer = policy.optimizer_class(groups, lr=learning_rate, **policy.optimizer_kwargs)  # type: ignore[call-arg]
    return policy.optimizer


def set_learning_rates(model: Any, optimizer: th.optim.Optimizer) -> None:
    """
    Set (and log) this update's learning rates: the actor's (the first group) is ``model._adaptive_learning_rate`` when
    ``model.adaptive_lr_kl_target`` is set, else ``model.lr_schedule``'s value; the critic's (the second group, when
    ``model.vf_learning_rate`` is set) ``model.vf_lr_schedule``'s. Schedule values are checked.

    :param model: a TrustPPO model
    :param optimizer: its policy's optimizer
    """
    progress = model._current_progress_remaining
    if model.adaptive_lr_kl_target is not None:
        rates = [model._adaptive_learning_rate]
    else:
        rates = [check_schedule_value("learning_rate", model.lr_schedule(progress))]
    if model.vf_learning_rate is not None:
        rates.append(check_schedule_value("vf_learning_rate", model.vf_lr_schedule(progress)))
        model.logger.record("train/vf_learning_rate", rates[1])
    model.logger.record("train/learning_rate", rates[0])
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate

"""
The parts of TrustTRPO's update that both paths share or that need no trust-region maths: the actor batch, the
reference path's critic epochs, and the update's logged keys (``sb3_trust.trpo.trust_trpo`` assembles them; the
accelerator computes the actor step's quantities and the critic epochs itself).
"""

import math

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.nn import functional as F

from sb3_trust.common.masking import mask_kwargs
from sb3_trust.common.messages import warn
from sb3_trust.common.trust_region import ActorBatch, ActorStepStats


def actor_batch(
    rollout_buffer: RolloutBuffer, sub_sampling_factor: int, normalize_advantage: bool, discrete: bool
) -> ActorBatch:
    """
    The whole rollout as one batch (optionally sub-sampled), with normalised advantages.

    :param rollout_buffer: the rollout
    :param sub_sampling_factor: keep every ``sub_sampling_factor``-th sample
    :param normalize_advantage: normalise the advantages over the batch
    :param discrete: the action space is ``Discrete`` (the actions become a flat long tensor)
    :return: the batch
    """
    # `get` shuffles even the full batch: drawing this permutation keeps the numpy RNG (critic minibatches) in step
    # with sb3-contrib, and the sub-sample is a random one
    rollout_data = next(rollout_buffer.get(batch_size=None))
    observations = rollout_data.observations
    actions = rollout_data.actions
    old_log_prob = rollout_data.old_log_prob
    advantages = rollout_data.advantages
    action_masks = mask_kwargs(rollout_data).get("action_masks")
    if sub_sampling_factor > 1:
        every = sub_sampling_factor
        if isinstance(observations, dict):
            observations = {key: obs[::every] for key, obs in observations.items()}
        else:
            observations = observations[::every]
        actions, old_log_prob, advantages = actions[::every], old_log_prob[::every], advantages[::every]
        action_masks = None if action_masks is None else action_masks[::every]
    if discrete:
        # Convert discrete action from float to long
        actions = actions.long().flatten()
    if normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return ActorBatch(observations, actions, old_log_prob, advantages, action_masks)


def critic_epochs(
    policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer, n_epochs: int, batch_size: int, actor_params: list[th.Tensor]
) -> tuple[list[float], int]:
    """
    ``n_epochs`` epochs of minibatch MSE regression of the value function on the returns, with the policy's optimizer.
    The actor parameters are frozen meanwhile, so that the shared optimizer cannot move them (contrib computes their
    gradients and sets them to ``None`` before the step: same result).

    :param policy: the policy
    :param rollout_buffer: the rollout
    :param n_epochs: ``n_critic_updates``
    :param batch_size: the minibatch size
    :param actor_params: the parameters of the actor step
    :return: the minibatch losses, and the number of minibatches skipped because of a non-finite loss
    """
    value_losses: list[float] = []
    n_skipped = 0
    requires_grad = [param.requires_grad for param in actor_params]
    for param in actor_params:
        param.requires_grad_(False)
    try:
        for _ in range(n_epochs):
            for rollout_data in rollout_buffer.get(batch_size):
                values_pred = policy.predict_values(rollout_data.observations)
                value_loss = F.mse_loss(rollout_data.returns, values_pred.flatten())
                value_losses.append(value_loss.item())
                if not value_loss.requires_grad:
                    continue  # the critic has no parameter of its own
                if not math.isfinite(value_losses[-1]):
                    n_skipped += 1
                    continue
                policy.optimizer.zero_grad()
                value_loss.backward()
                policy.optimizer.step()
    finally:
        for param, flag in zip(actor_params, requires_grad, strict=True):
            param.requires_grad_(flag)
    return value_losses, n_skipped


def record_update(
    algorithm: str,
    logger: Logger,
    actor_stats: ActorStepStats,
    value_losses: list[float],
    n_critic_skipped: int,
    n_update: int,
) -> None:
    """
    Log one update's keys (docs/trpo.md lists them), and warn about skipped critic minibatches.

    :param algorithm: the class name, for the warning
    :param logger: the model's logger
    :param actor_stats: the actor step's statistics
    :param value_losses: the critic minibatches' losses
    :param n_critic_skipped: the number of critic minibatches skipped (non-finite loss)
    :param n_update: the update's number (from 1)
    """
    if n_critic_skipped > 0:
        warn(
            f"{algorithm}: non-finite value loss in {n_critic_skipped} critic minibatch(es) at update {n_update}, skipped "
            "(see `train/critic_step_skipped`). Usual causes: unnormalised rewards (VecNormalize), a too large learning_rate"
        )
    step = actor_stats.step
    logger.record("train/policy_objective", actor_stats.policy_objective)
    logger.record("train/kl", actor_stats.kl)
    logger.record("train/kl_divergence_loss", step.kl)
    logger.record("train/surrogate_improvement", step.surrogate_improvement)
    logger.record("train/expected_improvement", step.expected_improvement)
    logger.record("train/is_line_search_success", float(step.success))
    logger.record("train/line_search_backtracks", step.n_backtracks)
    logger.record("train/step_size", actor_stats.step_size)
    logger.record("train/cg_residual", actor_stats.cg_residual)
    logger.record("train/critic_step_skipped", n_critic_skipped)
    if value_losses:
        logger.record("train/value_loss", np.mean(value_losses))

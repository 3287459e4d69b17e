"""
Helpers on SB3 ``ActorCriticPolicy`` objects that SB3 itself does not offer.
"""

import copy
from typing import Any

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs


def evaluate_actions_with_distribution(
    policy: ActorCriticPolicy, obs: PyTorchObs, actions: th.Tensor, action_masks: th.Tensor | None = None
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, Distribution]:
    """
    ``ActorCriticPolicy.evaluate_actions`` that also returns the action distribution, with one forward pass
    (same operations, same results as SB3's method).

    Note: SB3 distributions are stateful (``policy.action_dist`` is reused on every call), so the returned object is
    only valid until the policy's next forward pass.

    :param policy: the policy
    :param obs: observations
    :param actions: actions
    :param action_masks: the actions' masks, for a ``MaskableActorCriticPolicy`` (sb3-contrib's ``evaluate_actions``)
    :return: values, log-likelihood of the actions, entropy (``None`` without a closed form), distribution
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    distribution = policy._get_action_dist_from_latent(latent_pi)
    if action_masks is not None:
        distribution.apply_masking(action_masks)  # type: ignore[attr-defined]
    log_prob = distribution.log_prob(actions)
    values = policy.value_net(latent_vf)
    entropy = distribution.entropy()
    return values, log_prob, entropy, distribution


def _detached_distribution(distribution: Distribution) -> Distribution:
    """
    A shallow copy of an SB3 distribution object without its autograd history: tensors are detached copies and the
    wrapped torch distribution is dropped (it is rebuilt by the next ``proba_distribution`` call).
    """
    clone = copy.copy(distribution)
    for name, value in vars(clone).items():
        if isinstance(value, th.Tensor):
            setattr(clone, name, value.detach().clone())
        elif isinstance(value, th.distributions.Distribution) or (
            isinstance(value, list) and any(isinstance(item, th.distributions.Distribution) for item in value)
        ):
            setattr(clone, name, None)
    return clone


def frozen_copy(policy: ActorCriticPolicy, into: ActorCriticPolicy | None = None) -> ActorCriticPolicy:
    """
    A deep copy of ``policy`` without its optimizer, in eval mode, with gradients switched off.
    Its action distribution object is separate from ``policy``'s, so it can serve as π_old.
    Copying consumes no random numbers (unlike building a new policy, whose initialisation would).

    :param policy: the policy to copy
    :param into: an earlier frozen copy of the same policy, whose storage is reused (its parameters are overwritten)
    :return: the frozen copy
    """
    if into is not None:
        into.load_state_dict(policy.state_dict())
        return into
    # deepcopy cannot copy non-leaf tensors (gSDE keeps some in its distribution object): substitute a detached copy
    memo: dict[int, Any] = {id(policy.action_dist): _detached_distribution(policy.action_dist)}
    if hasattr(policy, "optimizer"):
        memo[id(policy.optimizer)] = None
    clone = copy.deepcopy(policy, memo)
    clone.set_training_mode(False)
    clone.requires_grad_(False)
    return clone

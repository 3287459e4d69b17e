"""
TrustPPO's minibatch loss and its gradient in closed form, without autograd, for the policies of the lean path
(``sb3_trust.common.fast_policy``: an MLP actor and critic, a Categorical or diagonal-Gaussian distribution).

The loss is the one of ``TrustPPO._update`` (SB3 PPO's, plus the KL-penalty and value-clipping variants)::

    loss = policy_loss + ent_coef * (-mean(entropy)) + vf_coef * value_loss

Its gradient is assembled from small pure functions: the derivative of each loss term with respect to the
per-sample quantities (``surrogate_ratio_grad``, ``value_loss_and_grad``), the derivative of the log-likelihood,
entropy and KL with respect to the distribution's parameters (``categorical_head_grad``, ``gaussian_head_grad``), and
one reverse-mode pass through each Linear/Tanh/ReLU chain (``chain_vjp``). The forward operations are those of the
autograd path and the derivatives follow autograd's rules, including its tie-breaking (``min``/``max`` of equal
values split the gradient, ``clamp`` passes it at the bounds), so the gradients agree with autograd's to rounding
(``tests/test_ppo_analytic.py``) and training agrees with SB3 PPO at the parity tests' tolerance
(``tests/test_ppo_parity.py``). This removes the autograd graph, which costs more than the arithmetic for the small
networks of PPO on a CPU.
"""

from typing import NamedTuple

import torch as th
from torch.nn import functional as F

from sb3_trust.common.fast_fisher import chain_forward, chain_from_layers, chain_parameters, chain_vjp
from sb3_trust.common.fast_policy import _ENTROPY_CONST, _LOG_SQRT_2PI, FastActorCritic, kl_from_params
from sb3_trust.common.fast_rollout import Minibatch
from sb3_trust.common.losses import normalize_advantages, value_loss


def surrogate_ratio_grad(ratio: th.Tensor, advantages: th.Tensor, clip_range: float | None) -> tuple[th.Tensor, th.Tensor]:
    """
    The surrogate loss and its derivative with respect to the ratio.

    - ``clip_range=None``: ``-mean(r·A)``, derivative ``-A / n``;
    - otherwise PPO-clip ``-mean(min(r·A, clip(r, 1-ε, 1+ε)·A))``: ``-A / n`` where the unclipped term is the
      minimum or ``r`` lies inside ``[1-ε, 1+ε]`` (bounds included, as autograd's ``clamp``), 0 elsewhere.

    :param ratio: π_new(a|s) / π_old(a|s), shape [n]
    :param advantages: advantages, shape [n]
    :param clip_range: ε, or ``None`` for the unclipped surrogate
    :return: the loss (scalar) and d loss / d ratio, shape [n]
    """
    grad = advantages * (-1.0 / ratio.shape[0])
    if clip_range is None:
        return -(advantages * ratio).mean(), grad
    unclipped = advantages * ratio
    clipped = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = -th.min(unclipped, clipped).mean()
    # Where the two terms are equal autograd splits the gradient in halves, which add up to the full gradient when
    # ratio is inside the clip range; equal terms with ratio outside it imply A = 0
    passes = (unclipped < clipped) | ((ratio >= 1 - clip_range) & (ratio <= 1 + clip_range))
    return loss, grad * passes


def value_loss_and_grad(
    values: th.Tensor,
    old_values: th.Tensor,
    returns: th.Tensor,
    clip_range_vf: float | None,
    mode: str,
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    ``sb3_trust.common.losses.value_loss`` and its derivative with respect to the predictions.

    :param values: current predictions V(s), shape [n]
    :param old_values: predictions at collection time, shape [n]
    :param returns: TD(λ) targets, shape [n]
    :param clip_range_vf: ε_v, or ``None`` for no clipping
    :param mode: ``"sb3"`` or ``"max"``
    :return: the loss, the fraction of clipped predictions, d loss / d values (shape [n])
    """
    loss, clip_fraction = value_loss(values, old_values, returns, clip_range_vf, mode)
    scale = 2.0 / values.shape[0]
    if clip_range_vf is None:
        return loss, clip_fraction, (values - returns) * scale
    change = values - old_values
    values_clipped = old_values + th.clamp(change, -clip_range_vf, clip_range_vf)
    inside = (change >= -clip_range_vf) & (change <= clip_range_vf)
    grad_clipped = (values_clipped - returns) * scale * inside
    if mode == "sb3":
        return loss, clip_fraction, grad_clipped
    # max(a, b): the larger term takes the gradient, equal terms share it
    unclipped_error, clipped_error = (returns - values) ** 2, (returns - values_clipped) ** 2
    weight = (unclipped_error > clipped_error).float() + 0.5 * (unclipped_error == clipped_error).float()
    return loss, clip_fraction, (values - returns) * scale * weight + grad_clipped * (1.0 - weight)


def categorical_head_grad(
    logits: th.Tensor,
    probs: th.Tensor,
    actions: th.Tensor,
    grad_log_prob: th.Tensor,
    grad_entropy: float,
    entropy: th.Tensor | None,
    old_probs: th.Tensor | None,
    grad_kl: float,
) -> th.Tensor:
    """
    The derivative with respect to the unnormalised logits (the action net's output) of
    ``sum_i g_i log π(a_i|s_i) + h · sum_i H(π(s_i)) + k · sum_i KL(π_old(s_i) ‖ π(s_i))``:
    ``g (onehot(a) - p) - h p (log p + H) + k (p - p_old)``.

    :param logits: normalised logits (log-probabilities) [n, n_actions]
    :param probs: probabilities [n, n_actions]
    :param actions: action indices [n, 1] (int64)
    :param grad_log_prob: g, per sample [n]
    :param grad_entropy: h (0: no entropy term)
    :param entropy: H per sample [n] (needed when ``grad_entropy != 0``)
    :param old_probs: p_old (``None``: no KL term)
    :param grad_kl: k
    :return: [n, n_actions]
    """
    weight = grad_log_prob.unsqueeze(-1)
    grad = (-weight) * probs
    grad.scatter_add_(1, actions, weight)
    if grad_entropy != 0:
        assert entropy is not None
        # SB3's entropy clamps -inf logits (whose probability is 0) to the most negative float
        safe_logits = th.clamp(logits, min=th.finfo(logits.dtype).min)
        grad -= grad_entropy * probs * (safe_logits + entropy.unsqueeze(-1))
    if old_probs is not None:
        grad += grad_kl * (probs - old_probs)
    return grad


def gaussian_head_grad(
    mean: th.Tensor,
    std: th.Tensor,
    actions: th.Tensor,
    grad_log_prob: th.Tensor,
    grad_entropy: float,
    old: tuple[th.Tensor, th.Tensor] | None,
    grad_kl: float,
) -> tuple[th.Tensor, th.Tensor]:
    """
    The derivatives with respect to the mean and to the state-independent ``log σ`` of
    ``sum_i g_i log π(a_i|s_i) + h · sum_i H(π(s_i)) + k · sum_i KL(π_old(s_i) ‖ π(s_i))`` (all summed over action
    dimensions): on μ, ``g (a - μ) / σ² + k (μ - μ_old) / σ²``; on log σ, the sum over samples of
    ``g ((a - μ)² / σ² - 1) + h + k (1 - σ_old² / σ² - (μ_old - μ)² / σ²)``.

    :param mean: μ [n, action_dim]
    :param std: σ [n, action_dim]
    :param actions: actions [n, action_dim]
    :param grad_log_prob: g, per sample [n]
    :param grad_entropy: h (0: no entropy term)
    :param old: (μ_old, σ_old) (``None``: no KL term)
    :param grad_kl: k
    :return: d / d μ [n, action_dim] and d / d log σ [action_dim]
    """
    inverse_variance = 1.0 / std**2
    diff = actions - mean
    weight = grad_log_prob.unsqueeze(-1)
    grad_mean = weight * diff * inverse_variance
    grad_log_std = (weight * (diff**2 * inverse_variance - 1)).sum(0)
    if grad_entropy != 0:
        grad_log_std += grad_entropy * mean.shape[0]
    if old is not None:
        old_mean, old_std = old
        old_diff = mean - old_mean
        grad_mean += grad_kl * old_diff * inverse_variance
        grad_log_std += (grad_kl * (1 - (old_std**2 + old_diff**2) * inverse_variance)).sum(0)
    return grad_mean, grad_log_std


def reverse_kl_head_grad(
    params: tuple[th.Tensor, th.Tensor], reference: tuple[th.Tensor, th.Tensor], is_categorical: bool
) -> tuple[th.Tensor, th.Tensor | None]:
    """
    The derivative of ``sum_i KL(π(s_i) ‖ π_ref(s_i))`` (summed over action dimensions) with respect to the
    distribution's parameters: Categorical, on the unnormalised logits, ``p (log p - log p_ref - KL)``; Gaussian, on μ,
    ``(μ - μ_ref) / σ_ref²``, and on the state-independent log σ, the sum over samples of ``σ² / σ_ref² - 1``.

    :param params: π's parameters (normalised logits and probabilities, or mean and std) [n, k]
    :param reference: π_ref's parameters, the same form
    :param is_categorical: which form
    :return: the derivative on the logits or the mean [n, k], and on log σ [k] (``None`` for a Categorical)
    """
    if is_categorical:
        logits, probs = params
        difference = th.where(probs == 0, th.zeros_like(logits), logits - reference[0])
        kl = (probs * difference).sum(-1, keepdim=True)
        return probs * (difference - kl), None
    (mean, std), (reference_mean, reference_std) = params, reference
    inverse_reference_variance = 1.0 / reference_std**2
    return (mean - reference_mean) * inverse_reference_variance, (std**2 * inverse_reference_variance - 1).sum(0)


class MinibatchTerms(NamedTuple):
    """The loss terms of one minibatch (only ``loss`` may carry an autograd graph), and the closed-form gradient if any."""

    loss: th.Tensor
    policy_loss: th.Tensor
    value_loss: th.Tensor
    entropy_loss: th.Tensor
    ratio: th.Tensor
    log_ratio: th.Tensor
    value_clip_fraction: th.Tensor
    grads: list[th.Tensor] | None


class AnalyticPPO:
    """
    The closed-form loss and gradient of one TrustPPO minibatch (see the module's docstring).

    :param fast: the lean path of the policy; every parameter must be trainable (see ``analytic_ppo``)
    :param parameters: the policy's parameters, in the order of the returned gradients
    :param numpy_tanh: evaluate ``tanh`` with NumPy (as the lean path's collection and autograd path do)
    """

    def __init__(self, fast: FastActorCritic, parameters: list[th.Tensor], numpy_tanh: bool = True):
        assert fast.pi_layers is not None and fast.vf_layers is not None
        self.actor = chain_from_layers(fast.pi_layers, fast.action_net)
        self.critic = chain_from_layers(fast.vf_layers, fast.value_net)
        self.is_categorical = fast.is_categorical
        self.log_std: th.Tensor | None = None if fast.is_categorical else fast.policy.log_std
        self.numpy_tanh = numpy_tanh
        position = {id(param): i for i, param in enumerate(parameters)}
        self._n_parameters = len(parameters)
        self._actor_positions = [position[id(param)] for param in chain_parameters(self.actor)]
        self._critic_positions = [position[id(param)] for param in chain_parameters(self.critic)]
        self._log_std_position = None if self.log_std is None else position[id(self.log_std)]

    @th.no_grad()
    def terms(
        self,
        batch: Minibatch,
        policy_loss: str,
        clip_range: float,
        kl_coef: float,
        old: tuple[th.Tensor, th.Tensor] | None,
        clip_range_vf: float | None,
        vf_clip_mode: str,
        ent_coef: float,
        vf_coef: float,
        normalize_advantage: bool,
        reference: tuple[th.Tensor, th.Tensor] | None = None,
        reference_coef: float = 0.0,
    ) -> MinibatchTerms:
        """
        :param batch: the minibatch
        :param policy_loss: ``"clip"``, ``"kl_penalty"`` or ``"unclipped"``
        :param clip_range: ε
        :param kl_coef: β of the KL penalty
        :param old: π_old's parameters on the minibatch (``policy_loss="kl_penalty"`` only)
        :param clip_range_vf: ε_v or ``None``
        :param vf_clip_mode: ``"sb3"`` or ``"max"``
        :param ent_coef: entropy coefficient
        :param vf_coef: value-loss coefficient
        :param normalize_advantage: normalise the advantages over the minibatch
        :param reference: π_ref's parameters on the minibatch, for the term ``reference_coef · mean(KL(π ‖ π_ref))``
            (the loss placement of the reference KL), or ``None``
        :param reference_coef: β of the reference KL
        :return: the terms, with the gradient in the order of ``parameters``
        """
        n = batch.observations.shape[0]
        features = batch.observations.float().flatten(1)
        actor_cache: list[th.Tensor] = []
        critic_cache: list[th.Tensor] = []
        out = chain_forward(self.actor, features, actor_cache, self.numpy_tanh)
        values = chain_forward(self.critic, features, critic_cache, self.numpy_tanh).flatten()

        # Distribution, log-likelihood and entropy: the operations of FastActorCritic
        if self.is_categorical:
            logits = out - out.logsumexp(dim=-1, keepdim=True)
            probs = F.softmax(logits, dim=-1)
            action_index = batch.actions.long().reshape(-1, 1)
            log_prob = logits.gather(-1, action_index).squeeze(-1)
            entropy = -(th.clamp(logits, min=th.finfo(logits.dtype).min) * probs).sum(-1)
            params = (logits, probs)
        else:
            assert self.log_std is not None
            mean, std = out, th.ones_like(out) * self.log_std.exp()
            actions = batch.actions
            log_prob = (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=1)
            entropy = (_ENTROPY_CONST + th.log(std)).sum(dim=1)
            params = (mean, std)

        advantages = normalize_advantages(batch.advantages) if normalize_advantage else batch.advantages
        log_ratio = log_prob - batch.old_log_prob
        ratio = th.exp(log_ratio)
        pg_loss, grad_ratio = surrogate_ratio_grad(ratio, advantages, clip_range if policy_loss == "clip" else None)
        grad_kl = 0.0
        if policy_loss == "kl_penalty":
            assert old is not None
            pg_loss = pg_loss + kl_coef * kl_from_params(old, params, self.is_categorical).mean()
            grad_kl = kl_coef / n
        else:
            old = None
        vf_loss, value_clip_fraction, grad_values = value_loss_and_grad(
            values, batch.old_values, batch.returns, clip_range_vf, vf_clip_mode
        )
        entropy_loss = -th.mean(entropy)
        loss = pg_loss + ent_coef * entropy_loss + vf_coef * vf_loss
        if reference is not None:
            loss = loss + reference_coef * kl_from_params(params, reference, self.is_categorical).mean()

        grad_log_prob = grad_ratio * ratio
        grad_entropy = -ent_coef / n
        grads: list[th.Tensor | None] = [None] * self._n_parameters
        if self.is_categorical:
            grad_out = categorical_head_grad(
                logits, probs, action_index, grad_log_prob, grad_entropy, entropy, None if old is None else old[1], grad_kl
            )
        else:
            grad_out, grad_log_std = gaussian_head_grad(mean, std, actions, grad_log_prob, grad_entropy, old, grad_kl)
            assert self._log_std_position is not None
            grads[self._log_std_position] = grad_log_std
        if reference is not None:
            reference_grad_out, reference_grad_log_std = reverse_kl_head_grad(params, reference, self.is_categorical)
            grad_out += (reference_coef / n) * reference_grad_out
            if reference_grad_log_std is not None:
                grads[self._log_std_position] += (reference_coef / n) * reference_grad_log_std  # type: ignore[operator]
        for position, grad in zip(self._actor_positions, chain_vjp(self.actor, actor_cache, grad_out), strict=True):
            grads[position] = grad
        grad_values = (grad_values * vf_coef).unsqueeze(-1)
        for position, grad in zip(self._critic_positions, chain_vjp(self.critic, critic_cache, grad_values), strict=True):
            grads[position] = grad
        return MinibatchTerms(
            loss,
            pg_loss,
            vf_loss,
            entropy_loss,
            ratio,
            log_ratio,
            value_clip_fraction,
            grads,  # type: ignore[arg-type]
        )


def analytic_ppo(fast: FastActorCritic, parameters: list[th.Tensor]) -> AnalyticPPO | None:
    """
    :param fast: the lean path of the policy
    :param parameters: the policy's parameters
    :return: the closed-form loss and gradient, or ``None`` if some parameters are frozen or not part of the actor,
        the critic or ``log_std`` (autograd then computes the gradient)
    """
    if not all(param.requires_grad for param in parameters):
        return None
    assert fast.pi_layers is not None and fast.vf_layers is not None
    own = chain_parameters(chain_from_layers(fast.pi_layers, fast.action_net))
    own += chain_parameters(chain_from_layers(fast.vf_layers, fast.value_net))
    if not fast.is_categorical:
        own.append(fast.policy.log_std)
    if sorted(map(id, own)) != sorted(map(id, parameters)):
        return None
    return AnalyticPPO(fast, parameters)

"""
A lean evaluation path for the common case of SB3's ``ActorCriticPolicy``: a flat Box observation, the
``FlattenExtractor``, an ``MlpExtractor`` of Linear layers and activations, and a Categorical or diagonal-Gaussian
action distribution.

It computes **the same operations as SB3** (same formulas as ``torch.distributions``, same order, same random draws),
without building distribution objects or going through ``nn.Module.__call__`` for every layer. This removes most of
the Python and dispatch overhead that dominates small networks on a CPU. Any other policy (custom policies,
CnnPolicy, MultiInputPolicy, gSDE, MultiDiscrete/MultiBinary actions) is not supported here: the algorithms then use
SB3's generic methods, and say so once in the log.
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS: dict[type[nn.Module], Callable[[th.Tensor], th.Tensor]] = {nn.Tanh: th.tanh, nn.ReLU: th.relu}
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_ENTROPY_CONST = 0.5 + 0.5 * math.log(2 * math.pi)

Layer = tuple[nn.Linear | None, Callable[[th.Tensor], th.Tensor] | None]


def _layers(sequential: nn.Sequential) -> list[Layer] | None:
    """
    :param sequential: a network of Linear layers and known activations
    :return: its layers as (linear, None) or (None, activation), or None if it contains anything else
    """
    layers: list[Layer] = []
    for module in sequential:
        if type(module) is nn.Linear:
            layers.append((module, None))
        elif type(module) in _ACTIVATIONS:
            layers.append((None, _ACTIVATIONS[type(module)]))
        else:
            return None
    return layers


def unsupported_reason(policy: ActorCriticPolicy) -> str | None:
    """
    :param policy: the policy
    :return: why the lean path cannot serve this policy, or ``None`` if it can
    """
    if type(policy) is not ActorCriticPolicy:
        return f"policy class {type(policy).__name__} (only ActorCriticPolicy/MlpPolicy is supported)"
    if not isinstance(policy.observation_space, spaces.Box) or len(policy.observation_space.shape) != 1:
        return f"observation space {policy.observation_space} (only flat Box is supported)"
    if type(policy.features_extractor) is not FlattenExtractor or (
        not policy.share_features_extractor and type(policy.vf_features_extractor) is not FlattenExtractor
    ):
        return "features extractor (only FlattenExtractor is supported)"
    if type(policy.mlp_extractor) is not MlpExtractor:
        return f"mlp_extractor {type(policy.mlp_extractor).__name__}"
    if _layers(policy.mlp_extractor.policy_net) is None or _layers(policy.mlp_extractor.value_net) is None:
        return "mlp_extractor layers (only Linear, Tanh and ReLU are supported)"
    if type(policy.action_dist) not in (CategoricalDistribution, DiagGaussianDistribution):
        return f"action distribution {type(policy.action_dist).__name__}"
    if type(policy.action_net) is not nn.Linear or type(policy.value_net) is not nn.Linear:
        return "action_net/value_net (only Linear is supported)"
    return None


class _NumpyTanh(th.autograd.Function):
    """``tanh`` evaluated by NumPy (several times faster than ``th.tanh`` on a CPU), with torch's own backward."""

    @staticmethod
    def forward(ctx: Any, x: th.Tensor) -> th.Tensor:  # type: ignore[override]
        y = th.empty_like(x)
        np.tanh(x.detach().numpy(), out=y.numpy())
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad_output: th.Tensor) -> th.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return th.ops.aten.tanh_backward(grad_output, y)


def numpy_tanh(x: th.Tensor) -> th.Tensor:
    """
    ``th.tanh(x)`` computed by NumPy's vectorised ``tanh`` on CPU float tensors (about 5x faster here for the batch
    sizes of PPO); results differ from ``th.tanh`` in the last bit at most. The backward pass is torch's
    ``tanh_backward``; it is not twice differentiable (use ``th.tanh`` for double backprop). Other devices and dtypes
    use ``th.tanh``.

    :param x: input
    :return: tanh(x)
    """
    if x.device.type != "cpu" or x.dtype not in (th.float32, th.float64):
        return th.tanh(x)
    if x.requires_grad and th.is_grad_enabled():
        return _NumpyTanh.apply(x)  # type: ignore[no-any-return]
    y = th.empty_like(x)
    np.tanh(x.detach().numpy(), out=y.numpy())
    return y


def _run(layers: list[Layer], x: th.Tensor, fast_tanh: bool = False) -> th.Tensor:
    for linear, activation in layers:
        if linear is not None:
            x = F.linear(x, linear.weight, linear.bias)
        elif fast_tanh and activation is th.tanh:
            x = numpy_tanh(x)
        else:
            x = activation(x)  # type: ignore[misc]
    return x


class FastActorCritic:
    """
    Lean forward passes of a supported ``ActorCriticPolicy`` (see ``unsupported_reason``). It holds references to the
    policy's own parameters, so it always sees their current values; rebuild it if the policy object is replaced.

    :param policy: the policy
    :param numpy_tanh: evaluate ``tanh`` layers with ``numpy_tanh`` (faster; last-bit differences from ``th.tanh``;
        not twice differentiable)
    """

    def __init__(self, policy: ActorCriticPolicy, numpy_tanh: bool = False) -> None:
        reason = unsupported_reason(policy)
        if reason is not None:
            raise ValueError(f"FastActorCritic does not support this policy: {reason}")
        self.policy = policy
        self.numpy_tanh = numpy_tanh
        self.pi_layers = _layers(policy.mlp_extractor.policy_net)
        self.vf_layers = _layers(policy.mlp_extractor.value_net)
        self.action_net: nn.Linear = policy.action_net  # type: ignore[assignment]
        self.value_net: nn.Linear = policy.value_net  # type: ignore[assignment]
        self.is_categorical = isinstance(policy.action_dist, CategoricalDistribution)
        self.action_dim = int(policy.action_space.shape[0]) if isinstance(policy.action_space, spaces.Box) else 1

    def latent(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :param obs: observations, shape [batch, obs_dim]
        :return: latent codes of the actor and the critic
        """
        # FlattenExtractor on a flat Box: preprocess_obs is obs.float(), then flatten
        features = obs.float().flatten(1)
        assert self.pi_layers is not None and self.vf_layers is not None
        return _run(self.pi_layers, features, self.numpy_tanh), _run(self.vf_layers, features, self.numpy_tanh)

    def latent_pi(self, obs: th.Tensor) -> th.Tensor:
        """
        :param obs: observations, shape [batch, obs_dim]
        :return: latent code of the actor (``latent(obs)[0]``, without evaluating the critic)
        """
        assert self.pi_layers is not None
        return _run(self.pi_layers, obs.float().flatten(1), self.numpy_tanh)

    def values(self, latent_vf: th.Tensor) -> th.Tensor:
        return F.linear(latent_vf, self.value_net.weight, self.value_net.bias)

    def distribution_params(self, latent_pi: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :param latent_pi: latent code of the actor
        :return: Categorical: normalised logits and probabilities; Gaussian: mean and std (per sample)
        """
        out = F.linear(latent_pi, self.action_net.weight, self.action_net.bias)
        if self.is_categorical:
            # torch.distributions.Categorical(logits=...): normalise, probs = softmax
            logits = out - out.logsumexp(dim=-1, keepdim=True)
            return logits, F.softmax(logits, dim=-1)
        # SB3 DiagGaussianDistribution: std = ones_like(mean) * exp(log_std)
        return out, th.ones_like(out) * self.policy.log_std.exp()

    def log_prob(self, params: tuple[th.Tensor, th.Tensor], actions: th.Tensor) -> th.Tensor:
        """
        :param params: output of ``distribution_params``
        :param actions: actions (Discrete: shape [batch] or [batch, 1], any dtype; Box: [batch, action_dim])
        :return: log-likelihood of the actions, shape [batch], summed over action dimensions
        """
        if self.is_categorical:
            logits, _ = params
            return logits.gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
        mean, std = params
        return (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=1)

    def entropy(self, params: tuple[th.Tensor, th.Tensor]) -> th.Tensor:
        """
        :param params: output of ``distribution_params``
        :return: entropy, shape [batch], summed over action dimensions
        """
        if self.is_categorical:
            logits, probs = params
            min_real = th.finfo(logits.dtype).min
            return -(th.clamp(logits, min=min_real) * probs).sum(-1)
        _, std = params
        return (_ENTROPY_CONST + th.log(std)).sum(dim=1)

    def log_prob_entropy(self, params: tuple[th.Tensor, th.Tensor], actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :return: ``log_prob(params, actions)`` and ``entropy(params)``
        """
        return self.log_prob(params, actions), self.entropy(params)

    def evaluate_actions(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        Same results as ``ActorCriticPolicy.evaluate_actions``.

        :param obs: observations
        :param actions: actions
        :return: values [batch, 1], log-likelihood [batch] and entropy [batch]
        """
        latent_pi, latent_vf = self.latent(obs)
        params = self.distribution_params(latent_pi)
        log_prob, entropy = self.log_prob_entropy(params, actions)
        return self.values(latent_vf), log_prob, entropy

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        Same results (and same random draws) as ``ActorCriticPolicy.forward``; call it under ``th.no_grad()``.

        :param obs: observations
        :param deterministic: take the mode instead of sampling
        :return: actions, values [batch, 1] and log-likelihood of the actions [batch]
        """
        latent_pi, latent_vf = self.latent(obs)
        values = self.values(latent_vf)
        params = self.distribution_params(latent_pi)
        if self.is_categorical:
            probs = params[1]
            if deterministic:
                actions = th.argmax(probs, dim=1)
            else:
                actions = th.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True).T.reshape(probs.shape[:-1])
        else:
            mean, std = params
            # Normal.rsample(): loc + eps * scale with eps = empty(shape).normal_()
            if deterministic:
                actions = mean
            else:
                actions = mean + th.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_() * std
        log_prob = self.log_prob(params, actions)
        if not self.is_categorical:
            actions = actions.reshape((-1, self.action_dim))
        return actions, values, log_prob


def kl_from_params(old: tuple[th.Tensor, th.Tensor], new: tuple[th.Tensor, th.Tensor], is_categorical: bool) -> th.Tensor:
    """
    Closed-form KL(old ‖ new) from the parameters returned by ``FastActorCritic.distribution_params``, summed over
    action dimensions (the same value as ``sb3_trust.common.kl.exact_kl`` on the distribution objects).

    :param old: parameters of the first distribution
    :param new: parameters of the second distribution
    :param is_categorical: Categorical (logits, probs) or Gaussian (mean, std) parameters
    :return: KL per state, shape [batch]
    """
    if is_categorical:
        old_logits, old_probs = old
        new_logits, _ = new
        # p·(log p - log q), with 0·log 0 = 0
        terms = old_probs * (old_logits - new_logits)
        return th.where(old_probs == 0, th.zeros_like(terms), terms).sum(-1)
    old_mean, old_std = old
    new_mean, new_std = new
    var_ratio = (old_std / new_std).pow(2)
    t1 = ((old_mean - new_mean) / new_std).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)


def clip_grad_norm(parameters: list[th.nn.Parameter], max_norm: float) -> th.Tensor:
    """
    ``torch.nn.utils.clip_grad_norm_`` (same operations, same result) for parameters on one device and dtype,
    without its per-call grouping overhead.

    :param parameters: parameters whose gradients are clipped in place
    :param max_norm: max L2 norm of all gradients together
    :return: the total norm before clipping
    """
    return clip_grads_([p.grad for p in parameters if p.grad is not None], max_norm)


def clip_grads_(grads: list[th.Tensor], max_norm: float) -> th.Tensor:
    """
    ``clip_grad_norm`` on the gradients themselves.

    :param grads: gradients, scaled in place
    :param max_norm: max L2 norm of all gradients together
    :return: the total norm before clipping
    """
    if len(grads) == 0:
        return th.tensor(0.0)
    total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
    clip_coef = th.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    th._foreach_mul_(grads, clip_coef)
    return total_norm


def use_fused_adam(optimizer: th.optim.Optimizer, policy_kwargs: dict | None) -> bool:
    """
    Switch SB3's default Adam optimizer to torch's fused implementation (one kernel for all parameters instead of a
    Python loop over them): the same update rule, with a different order of floating-point operations (results agree
    to about 1e-7). Left alone when the user chose an optimizer or its ``foreach``/``fused`` options in
    ``policy_kwargs``.

    :param optimizer: the policy's optimizer
    :param policy_kwargs: the policy keyword arguments the user gave
    :return: whether the fused implementation is now used
    """
    policy_kwargs = policy_kwargs or {}
    optimizer_kwargs = policy_kwargs.get("optimizer_kwargs") or {}
    if type(optimizer) is not th.optim.Adam or "fused" in optimizer_kwargs or "foreach" in optimizer_kwargs:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(p.device.type not in ("cpu", "cuda") or not p.is_floating_point() for p in params):
        return False
    optimizer.defaults["fused"] = True
    for group in optimizer.param_groups:
        group["fused"] = True
        group["foreach"] = None
    return True

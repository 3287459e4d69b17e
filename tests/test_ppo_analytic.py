"""
TrustPPO's closed-form minibatch gradient (``sb3_trust.ppo.analytic``) against autograd on the same loss: the pure
derivative functions on their own, and the whole minibatch gradient for every variant, on real SB3 policies.
"""

import itertools

import numpy as np
import pytest
import torch as th

from sb3_trust import TrustPPO
from sb3_trust.common.fast_policy import kl_from_params
from sb3_trust.common.fast_rollout import FlatRollout
from sb3_trust.common.losses import clipped_surrogate_loss, surrogate_loss, value_loss
from sb3_trust.ppo.analytic import (
    analytic_ppo,
    categorical_head_grad,
    gaussian_head_grad,
    reverse_kl_head_grad,
    surrogate_ratio_grad,
    value_loss_and_grad,
)


def _autograd(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    return out.detach(), th.autograd.grad(out, inputs)


@pytest.mark.parametrize("clip_range", [None, 0.2])
def test_surrogate_ratio_grad(clip_range):
    generator = th.Generator().manual_seed(0)
    ratio = th.exp(0.3 * th.randn(200, generator=generator, dtype=th.float64))
    # exact ties: ratio on the clip bounds, and zero advantages
    ratio[:4] = th.tensor([0.8, 1.2, 1.0, 1.2], dtype=th.float64)
    advantages = th.randn(200, generator=generator, dtype=th.float64)
    advantages[4:8] = 0.0
    loss, grad = surrogate_ratio_grad(ratio, advantages, clip_range)
    if clip_range is None:
        expected, (expected_grad, _) = _autograd(surrogate_loss, ratio, advantages)
    else:
        expected, (expected_grad, _) = _autograd(lambda r, a: clipped_surrogate_loss(r, a, clip_range), ratio, advantages)
    th.testing.assert_close(loss, expected)
    th.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("clip_range_vf, mode", [(None, "sb3"), (0.1, "sb3"), (0.1, "max")])
def test_value_loss_and_grad(clip_range_vf, mode):
    generator = th.Generator().manual_seed(1)
    values, old_values, returns = th.randn(3, 300, generator=generator, dtype=th.float64)
    # exact ties: changes on the clip bounds, and equal clipped and unclipped errors
    old_values[:3] = values[:3] - th.tensor([0.1, -0.1, 0.0], dtype=th.float64)
    loss, clip_fraction, grad = value_loss_and_grad(values, old_values, returns, clip_range_vf, mode)
    expected, (expected_grad,) = _autograd(lambda v: value_loss(v, old_values, returns, clip_range_vf, mode)[0], values)
    th.testing.assert_close(loss, expected)
    th.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    assert clip_fraction == value_loss(values, old_values, returns, clip_range_vf, mode)[1]


def test_categorical_head_grad():
    generator = th.Generator().manual_seed(2)
    n, k = 50, 4
    out = th.randn(n, k, generator=generator, dtype=th.float64)
    old_out = out + 0.3 * th.randn(n, k, generator=generator, dtype=th.float64)
    actions = th.randint(k, (n, 1), generator=generator)
    g = th.randn(n, generator=generator, dtype=th.float64)
    h, c = 0.7, 1.3

    def params(o):
        logits = o - o.logsumexp(-1, keepdim=True)
        return logits, logits.exp()

    old = tuple(x.detach() for x in params(old_out))

    def objective(o):
        logits, probs = params(o)
        entropy = -(logits * probs).sum(-1)
        return (
            (g * logits.gather(-1, actions).squeeze(-1)).sum()
            + h * entropy.sum()
            + c * kl_from_params(old, (logits, probs), True).sum()
        )

    _, (expected,) = _autograd(objective, out)
    logits, probs = params(out)
    entropy = -(logits * probs).sum(-1)
    grad = categorical_head_grad(logits, probs, actions, g, h, entropy, old[1], c)
    th.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_gaussian_head_grad():
    generator = th.Generator().manual_seed(3)
    n, k = 60, 3
    mean = th.randn(n, k, generator=generator, dtype=th.float64)
    log_std = 0.3 * th.randn(k, generator=generator, dtype=th.float64)
    old_mean = mean + 0.2 * th.randn(n, k, generator=generator, dtype=th.float64)
    old_std = th.ones(n, k, dtype=th.float64) * (log_std + 0.1).exp()
    actions = mean + th.randn(n, k, generator=generator, dtype=th.float64)
    g = th.randn(n, generator=generator, dtype=th.float64)
    h, c = -0.4, 2.0

    def objective(m, s):
        std = th.ones_like(m) * s.exp()
        log_prob = (-((actions - m) ** 2) / (2 * std**2) - std.log()).sum(1)
        entropy = th.log(std).sum(1)
        return (g * log_prob).sum() + h * entropy.sum() + c * kl_from_params((old_mean, old_std), (m, std), False).sum()

    _, (expected_mean, expected_log_std) = _autograd(objective, mean, log_std)
    std = th.ones_like(mean) * log_std.exp()
    grad_mean, grad_log_std = gaussian_head_grad(mean, std, actions, g, h, (old_mean, old_std), c)
    th.testing.assert_close(grad_mean, expected_mean, rtol=1e-10, atol=1e-12)
    th.testing.assert_close(grad_log_std, expected_log_std, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("is_categorical", [True, False])
def test_reverse_kl_head_grad(is_categorical):
    generator = th.Generator().manual_seed(4)
    n, k = 40, 3
    out = th.randn(n, k, generator=generator, dtype=th.float64)
    log_std = 0.3 * th.randn(k, generator=generator, dtype=th.float64)
    reference_out = out + 0.4 * th.randn(n, k, generator=generator, dtype=th.float64)

    def params(o, s):
        if is_categorical:
            logits = o - o.logsumexp(-1, keepdim=True)
            return logits, logits.exp()
        return o, th.ones_like(o) * s.exp()

    reference = tuple(x.detach() for x in params(reference_out, log_std - 0.2))
    _, (expected_out, expected_log_std) = _autograd(
        lambda o, s: kl_from_params(params(o, s), reference, is_categorical).sum() + 0 * s.sum(), out, log_std
    )
    grad_out, grad_log_std = reverse_kl_head_grad(params(out, log_std), reference, is_categorical)
    th.testing.assert_close(grad_out, expected_out, rtol=1e-10, atol=1e-12)
    if is_categorical:
        assert grad_log_std is None
    else:
        th.testing.assert_close(grad_log_std, expected_log_std, rtol=1e-10, atol=1e-12)


VARIANTS = [
    dict(policy_loss="clip"),
    dict(policy_loss="clip", clip_range_vf=0.05, ent_coef=0.01),
    dict(policy_loss="clip", clip_range_vf=0.05, vf_clip_mode="max", normalize_advantage=False),
    dict(policy_loss="kl_penalty", kl_coef=0.7, ent_coef=0.02),
    dict(policy_loss="kl_penalty", adaptive_kl_target=0.01),
    dict(policy_loss="unclipped", ent_coef=-0.01),
    dict(policy_loss="clip", reference_kl_coef=0.3),
]


@pytest.mark.parametrize(
    "env_id, variant, activation", list(itertools.product(["CartPole-v1", "Pendulum-v1"], VARIANTS, ["tanh", "relu"]))
)
def test_minibatch_gradient_matches_autograd(env_id, variant, activation):
    """The gradient of the autograd path's loss, on minibatches of a real rollout after some training"""
    activation_fn = th.nn.Tanh if activation == "tanh" else th.nn.ReLU
    model = TrustPPO(
        "MlpPolicy",
        env_id,
        n_steps=256,
        batch_size=64,
        n_epochs=3,
        seed=0,
        device="cpu",
        policy_kwargs=dict(net_arch=[32, 32], activation_fn=activation_fn),
        **variant,
    )
    model.learn(512)  # the policy has moved: ratios away from 1, some clipped
    fast = model._fast_path()
    parameters = list(model.policy.parameters())
    analytic = analytic_ppo(fast, parameters)
    assert analytic is not None
    rollout = FlatRollout(model.rollout_buffer, model.device)
    # π_old: a slightly different policy, so that the KL and the ratios are not trivial
    with th.no_grad():
        old = fast.distribution_params(fast.latent(rollout.observations)[0])
        old = (old[0] + 0.05, old[1]) if not fast.is_categorical else old
    np.random.seed(0)
    clip_range_vf = variant.get("clip_range_vf")
    ent_coef = variant.get("ent_coef", 0.0)
    kl_coef = variant.get("kl_coef", 1.0)
    need_kl = model.policy_loss == "kl_penalty"
    # π_ref (loss placement of the reference KL): another perturbation of the current policy
    reference_coef = variant.get("reference_kl_coef", 0.0)
    reference = (old[0] - 0.1, old[1]) if reference_coef else None
    if reference is not None and fast.is_categorical:
        logits = old[0] + 0.3 * th.randn(old[0].shape)
        logits = logits - logits.logsumexp(-1, keepdim=True)
        reference = (logits, logits.exp())
    for batch in rollout.minibatches(64):
        # perturb the rollout's old log-likelihoods so that some ratios leave the clip range
        batch = batch._replace(old_log_prob=batch.old_log_prob + 0.3 * th.randn(batch.old_log_prob.shape))
        rows = (old[0][batch.indices], old[1][batch.indices]) if need_kl else None
        reference_rows = (reference[0][batch.indices], reference[1][batch.indices]) if reference is not None else None
        terms = analytic.terms(
            batch, model.policy_loss, 0.2, kl_coef, rows, clip_range_vf, model.vf_clip_mode, ent_coef, 0.5,
            model.normalize_advantage, reference_rows, reference_coef,
        )  # fmt: skip
        autograd_terms = model._autograd_terms(
            batch, old, need_kl, reference, reference_coef, 0.2, clip_range_vf, ent_coef, kl_coef
        )
        expected = th.autograd.grad(autograd_terms.loss, parameters)
        th.testing.assert_close(terms.loss, autograd_terms.loss.detach(), rtol=1e-5, atol=1e-6)
        for name, grad, expected_grad in zip(
            [name for name, _ in model.policy.named_parameters()], terms.grads, expected, strict=True
        ):
            th.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name} differs")


def test_frozen_parameters_use_autograd():
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, device="cpu")
    parameters = list(model.policy.parameters())
    assert analytic_ppo(model._fast_path(), parameters) is not None
    model.policy.action_net.weight.requires_grad_(False)
    assert analytic_ppo(model._fast_path(), parameters) is None
    model.learn(128)  # trains on the autograd path, leaving the frozen weight alone

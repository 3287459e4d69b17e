"""Exact KL between SB3 distributions: summed over action dimensions, direction KL(p‖q), checked against Monte Carlo."""

import pytest
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    kl_divergence,
)

from sb3_trust.common.kl import AdaptiveKLController, approx_kl_k3, exact_kl


def _gaussians(dim=3, batch=5):
    th.manual_seed(0)
    p = DiagGaussianDistribution(dim).proba_distribution(th.randn(batch, dim), th.randn(dim) * 0.3)
    q = DiagGaussianDistribution(dim).proba_distribution(th.randn(batch, dim), th.randn(dim) * 0.3)
    return p, q


def test_gaussian_kl_is_summed_over_dimensions_unlike_sb3():
    p, q = _gaussians()
    ours = exact_kl(p, q)
    assert ours.shape == (5,)
    sb3 = kl_divergence(p, q)  # [batch, dim]: not reduced
    th.testing.assert_close(ours, sb3.sum(dim=1))
    # By hand, one dimension: log(s_q/s_p) + (s_p² + (m_p-m_q)²) / (2 s_q²) - 1/2
    mp, sp = p.distribution.mean, p.distribution.stddev
    mq, sq = q.distribution.mean, q.distribution.stddev
    by_hand = (th.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5).sum(dim=1)
    th.testing.assert_close(ours, by_hand)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DiagGaussianDistribution(2).proba_distribution(th.randn(1, 2), th.randn(2) * 0.3),
        lambda: CategoricalDistribution(4).proba_distribution(th.randn(1, 4)),
        lambda: MultiCategoricalDistribution([3, 2]).proba_distribution(th.randn(1, 5)),
        lambda: BernoulliDistribution(3).proba_distribution(th.randn(1, 3)),
    ],
    ids=["gaussian", "categorical", "multicategorical", "bernoulli"],
)
def test_kl_matches_monte_carlo_and_direction(make):
    th.manual_seed(1)
    p, q = make(), make()
    kl_pq = exact_kl(p, q).item()
    samples = p.distribution.sample((20000,)) if not isinstance(p, MultiCategoricalDistribution) else None
    if samples is None:
        samples = th.stack([d.sample((20000,)) for d in p.distribution], dim=-1)
    samples = samples.reshape(20000, -1)
    n = samples.shape[0]

    def log_prob(dist, actions):
        if isinstance(dist, CategoricalDistribution):
            actions = actions.squeeze(-1)
        return dist.log_prob(actions)

    # rebuild batched distributions of size n with the same parameters
    def expand(dist):
        if isinstance(dist, DiagGaussianDistribution):
            return DiagGaussianDistribution(dist.action_dim).proba_distribution(
                dist.distribution.mean.expand(n, -1), dist.distribution.stddev[0].log()
            )
        if isinstance(dist, CategoricalDistribution):
            return CategoricalDistribution(dist.action_dim).proba_distribution(dist.distribution.logits.expand(n, -1))
        if isinstance(dist, MultiCategoricalDistribution):
            logits = th.cat([d.logits for d in dist.distribution], dim=1)
            return MultiCategoricalDistribution(dist.action_dims).proba_distribution(logits.expand(n, -1))
        return BernoulliDistribution(dist.action_dims).proba_distribution(dist.distribution.logits.expand(n, -1))

    pn, qn = expand(p), expand(q)
    monte_carlo = (log_prob(pn, samples) - log_prob(qn, samples)).mean().item()
    assert kl_pq == pytest.approx(monte_carlo, rel=0.1, abs=5e-3)
    assert exact_kl(p, p).abs().max().item() < 1e-6


def test_gsde_kl_is_summed_and_zero_for_itself():
    th.manual_seed(0)
    dist = StateDependentNoiseDistribution(2)
    dist.proba_distribution(th.randn(4, 2), th.randn(3, 2) * 0.1, th.randn(4, 3))
    other = StateDependentNoiseDistribution(2)
    other.proba_distribution(th.randn(4, 2), th.randn(3, 2) * 0.1, th.randn(4, 3))
    kl = exact_kl(dist, other)
    assert kl.shape == (4,)
    th.testing.assert_close(kl, th.distributions.kl_divergence(dist.distribution, other.distribution).sum(-1))
    assert exact_kl(dist, dist).abs().max().item() < 1e-6


def test_kl_rejects_mixed_types():
    p, _ = _gaussians()
    with pytest.raises(TypeError, match="same type"):
        exact_kl(p, CategoricalDistribution(2).proba_distribution(th.randn(5, 2)))


def test_k3_estimator_by_hand():
    log_ratio = th.tensor([0.0, th.log(th.tensor(2.0)).item()])
    # (r - 1) - log r: 0 and 1 - log 2
    assert approx_kl_k3(log_ratio).item() == pytest.approx((0 + 1 - 0.6931471805599453) / 2)


@pytest.mark.parametrize(
    "coef, kl, expected",
    [
        (1.0, 0.02, 2.0),  # 0.02 > 1.5 * 0.01: double
        (1.0, 0.015, 1.0),  # exactly 1.5·target: unchanged (strict inequality, as the paper)
        (1.0, 0.01, 1.0),  # inside the band
        (1.0, 0.007, 1.0),  # inside (0.01 / 1.5 = 0.00667)
        (1.0, 0.006, 0.5),  # below: halve
        (3.0, 0.0, 1.5),
        (1e4, 1.0, 1e4),  # bounded above
        (1e-4, 0.0, 1e-4),  # bounded below
    ],
)
def test_adaptive_controller_table(coef, kl, expected):
    assert AdaptiveKLController(target=0.01).update(coef, kl) == pytest.approx(expected)

"""
What TrustPPO logs about an update, kept in buffers made once (sb3_trust/ppo/update_stats.py), against SB3's reduction
of the same per-minibatch values (one Python float per minibatch, ``np.mean`` of them); the buffers reused between
updates (the rollout's table, π_old's parameters) against fresh computations.
"""

import numpy as np
import pytest
import torch as th

from sb3_trust import TrustPPO
from sb3_trust.common.fast_policy import kl_from_params
from sb3_trust.common.fast_rollout import FlatRollout
from sb3_trust.ppo.analytic import MinibatchTerms
from sb3_trust.ppo.fused import ENTROPY_LOSS, LOSS, POLICY_LOSS, VALUE_CLIP_FRACTION, VALUE_LOSS
from sb3_trust.ppo.update_stats import UpdateStats


def _terms(n: int, generator: th.Generator) -> MinibatchTerms:
    log_ratio = 0.3 * th.randn(n, generator=generator)
    scalars = th.randn(5, generator=generator)
    return MinibatchTerms(scalars[3], scalars[0], scalars[1], scalars[2], log_ratio.exp(), log_ratio, scalars[4], None)


@pytest.mark.parametrize("sizes", [[48, 16], [32, 32]], ids=["uneven", "even"])
@pytest.mark.parametrize("stop_after", [None, 1], ids=["all-epochs", "early-stop"])
def test_logged_statistics_are_sb3s_reduction(sizes, stop_after):
    generator = th.Generator().manual_seed(0)
    stats = UpdateStats()
    n_epochs, clip_range = 3, 0.2
    for _update in range(2):  # the second update reuses the buffers and must forget the first
        stats.begin(n_epochs * len(sizes), sum(sizes), clip_range, th.float32, th.device("cpu"))
        recorded: list[MinibatchTerms] = []
        last_epoch: list[MinibatchTerms] = []
        for epoch in range(n_epochs):
            stats.begin_epoch()
            last_epoch = []
            for position, size in enumerate(sizes):
                terms = _terms(size, generator)
                stats.store(terms, stats.next(size))
                recorded.append(terms)
                last_epoch.append(terms)
                if stop_after is not None and epoch == stop_after and position == 0:
                    break  # target_kl's early stop: the minibatch that stopped it is logged
            stats.end_epoch()
            if stop_after is not None and epoch == stop_after:
                break
    # SB3's reduction of the last update: Python floats per minibatch, then np.mean
    for column, name in [
        (POLICY_LOSS, "policy_loss"),
        (VALUE_LOSS, "value_loss"),
        (ENTROPY_LOSS, "entropy_loss"),
        (VALUE_CLIP_FRACTION, "value_clip_fraction"),
    ]:
        assert stats.mean(column) == pytest.approx(np.mean([getattr(terms, name).item() for terms in recorded]), rel=1e-6)
    assert stats.last(LOSS) == recorded[-1].loss.item()
    clip_fractions = [th.mean((th.abs(terms.ratio - 1) > clip_range).float()).item() for terms in recorded]
    assert stats.clip_fraction() == pytest.approx(np.mean(clip_fractions), rel=1e-6)
    assert 0 < stats.clip_fraction() < 1  # not vacuous
    assert stats.ratio_mean() == pytest.approx(np.mean([terms.ratio.mean().item() for terms in recorded]), rel=1e-6)
    approx_kl = [th.mean((th.exp(terms.log_ratio) - 1) - terms.log_ratio).item() for terms in last_epoch]
    assert stats.last_epoch_kl() == pytest.approx(np.mean(approx_kl), rel=1e-5)
    assert stats.ratio_max() == max(terms.ratio.max().item() for terms in recorded)


def test_terms_written_in_place_are_not_copied():
    stats = UpdateStats()
    stats.begin(1, 4, 0.2, th.float32, th.device("cpu"))
    slots = stats.next(4)
    slots[0].fill_(2.0)
    slots[1].fill_(np.log(2.0))
    slots[2].copy_(th.arange(5.0))
    stats.store(MinibatchTerms(*slots[2][[3, 0, 1, 2]], slots[0], slots[1], slots[2][4], None), slots)
    stats.end_epoch()
    assert stats.ratio_mean() == 2.0 and stats.mean(VALUE_LOSS) == 1.0 and stats.last(LOSS) == 3.0


def test_reused_buffers_hold_what_fresh_ones_would():
    """π_old's parameters (chunked into a reused buffer), the post-update KL (chunked) and the rollout table."""
    model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=100, batch_size=32, seed=0, device="cpu")
    model.learn(100)
    fast = model._fast_path()
    first = FlatRollout(model.rollout_buffer, model.device)
    previous = first.table.clone().fill_(np.nan)
    again = FlatRollout(model.rollout_buffer, model.device, previous)
    assert again.table is previous and th.equal(again.table, first.table)
    old = model._distribution_params(fast, first)  # 4 chunks of at most batch_size rows
    whole = fast.distribution_params(fast.latent_pi(first.observations))
    for ours, theirs in zip(old, whole, strict=True):
        th.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    old = tuple(param.clone() for param in old)
    with th.no_grad():
        for param in model.policy.parameters():
            param.add_(0.1)
    new = fast.distribution_params(fast.latent_pi(first.observations))
    expected = kl_from_params(old, new, fast.is_categorical).mean().item()
    assert expected > 0
    assert model._rollout_kl(old, first) == pytest.approx(expected, rel=1e-5)

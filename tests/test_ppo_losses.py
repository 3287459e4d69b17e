"""The PPO loss terms against hand computations."""

import pytest
import torch as th

from sb3_trust.common.losses import normalize_advantages, value_loss
from sb3_trust.ppo.losses import POLICY_LOSSES, clipped_surrogate_loss, kl_penalty_loss, surrogate_loss


def test_clipped_surrogate_by_hand():
    ratio = th.tensor([0.5, 1.0, 1.5, 1.1], requires_grad=True)
    adv = th.tensor([1.0, -2.0, 1.0, -1.0])
    loss = clipped_surrogate_loss(ratio, adv, clip_range=0.2)
    # min(r*A, clip(r)*A): 0.5*1 = 0.5 (vs 0.8); -2*1 = -2; min(1.5, 1.2) = 1.2; min(-1.1, -1.1) = -1.1
    assert loss.item() == pytest.approx(-(0.5 - 2.0 + 1.2 - 1.1) / 4)
    loss.backward()
    # the clipped sample (r=1.5, A>0) has no gradient; the others have -A/4
    assert ratio.grad.tolist() == pytest.approx([-0.25, 0.5, 0.0, 0.25])


def test_surrogate_and_penalty_by_hand():
    ratio = th.tensor([0.5, 2.0])
    adv = th.tensor([1.0, 3.0])
    kl = th.tensor([0.1, 0.3])
    assert surrogate_loss(ratio, adv).item() == pytest.approx(-(0.5 + 6.0) / 2)
    assert kl_penalty_loss(ratio, adv, kl=kl, kl_coef=2.0).item() == pytest.approx(-(0.5 + 6.0) / 2 + 2.0 * 0.2)


def test_value_loss_modes_by_hand():
    values = th.tensor([1.0, 3.0, 0.0])
    old = th.tensor([0.0, 2.9, 0.0])
    returns = th.tensor([0.0, 3.0, 2.0])
    # no clipping: plain MSE
    loss, frac = value_loss(values, old, returns, None)
    assert loss.item() == pytest.approx((1 + 0 + 4) / 3)
    assert frac.item() == 0.0
    # V_clip = old + clip(V - old, ±0.5) = [0.5, 3.0, 0.0]
    loss, frac = value_loss(values, old, returns, 0.5, "sb3")
    assert loss.item() == pytest.approx((0.25 + 0 + 4) / 3)
    assert frac.item() == pytest.approx(1 / 3)
    # pessimistic: max((R-V)², (R-V_clip)²) = [1, 0, 4]
    loss, _ = value_loss(values, old, returns, 0.5, "max")
    assert loss.item() == pytest.approx((1 + 0 + 4) / 3)
    with pytest.raises(ValueError, match="vf_clip_mode"):
        value_loss(values, old, returns, 0.5, "mean")


def test_normalize_advantages():
    adv = th.tensor([1.0, 2.0, 3.0])
    th.testing.assert_close(normalize_advantages(adv), (adv - 2.0) / (1.0 + 1e-8))
    one = th.tensor([5.0])
    assert normalize_advantages(one).item() == 5.0


def test_registry_calls_each_function_with_its_keywords():
    ratio = th.tensor([0.5, 1.5])
    adv = th.tensor([1.0, 1.0])
    kl = th.tensor([0.2, 0.4])
    assert POLICY_LOSSES["clip"](ratio, adv, clip_range=0.2).item() == pytest.approx(-(0.5 + 1.2) / 2)
    assert POLICY_LOSSES["unclipped"](ratio, adv).item() == pytest.approx(-1.0)
    assert POLICY_LOSSES["kl_penalty"](ratio, adv, kl=kl, kl_coef=0.5).item() == pytest.approx(-1.0 + 0.15)
    assert [name for name, entry in POLICY_LOSSES.items() if entry.needs_kl] == ["kl_penalty"]

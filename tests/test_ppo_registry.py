"""
A variant is one function and one registry entry: a loss registered only here is trained, by the reference path (the
accelerator does not know it), with exactly the update that autograd gives for that loss.
"""

import copy

import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_trust import TrustPPO, accel
from sb3_trust.ppo.losses import POLICY_LOSSES, PolicyLoss


def capped_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor, *, clip_range: float) -> th.Tensor:
    """A loss no library has: the ratio capped above only, ``-mean(min(r, 1 + ε)·A)``."""
    return -(th.clamp(ratio, max=1 + clip_range) * advantages).mean()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(POLICY_LOSSES, "test_capped", PolicyLoss(capped_surrogate_loss, ("clip_range",)))
    return "test_capped"


class Snapshot(BaseCallback):
    """Keeps the policy and the optimizer as they are when the first rollout ends (just before the first update)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not hasattr(self, "policy"):
            self.policy = copy.deepcopy(self.model.policy)


def _one_update(policy_loss: str, **kwargs) -> tuple[TrustPPO, Snapshot]:
    # One minibatch of the whole rollout per epoch: the update is 3 steps on a known loss
    model = TrustPPO(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=64,
        n_epochs=3,
        learning_rate=1e-2,
        clip_range=0.05,
        policy_loss=policy_loss,
        policy_kwargs=dict(net_arch=[8]),
        seed=0,
        device="cpu",
        **kwargs,
    )
    snapshot = Snapshot()
    model.learn(64, callback=snapshot)
    return model, snapshot


def test_a_registered_loss_is_trained_by_the_reference_path_with_autograds_update(registered):
    model, snapshot = _one_update(registered)
    assert model.train_backend == "reference"
    if accel.unavailable_reason() is None:
        assert registered in model.backend_reasons["train"]
    # The oracle: the same step computed here, on the snapshot, from the rollout the model trained on
    policy = snapshot.policy
    data = next(model.rollout_buffer.get(None))
    for _ in range(3):
        _, log_prob, _ = policy.evaluate_actions(data.observations, data.actions)
        values = policy.predict_values(data.observations).flatten()
        advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
        ratio = th.exp(log_prob - data.old_log_prob)
        loss = capped_surrogate_loss(ratio, advantages, clip_range=0.05) + 0.5 * th.mean((data.returns - values) ** 2)
        policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        policy.optimizer.step()
    for (name, expected), actual in zip(policy.named_parameters(), model.policy.parameters(), strict=True):
        th.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    # Not vacuous: the registered loss trains differently from the losses it resembles
    for other in ("clip", "unclipped"):
        trained, _ = _one_update(other)
        assert any(
            not th.allclose(a, b, atol=1e-6)
            for a, b in zip(trained.policy.parameters(), model.policy.parameters(), strict=True)
        ), other


def test_the_accelerator_refuses_what_it_does_not_implement(registered):
    if accel.unavailable_reason() is not None:
        pytest.skip(f"accelerator unavailable: {accel.unavailable_reason()}")
    with pytest.raises(ValueError, match=f"backend='accelerated'.*{registered}"):
        TrustPPO("MlpPolicy", "Pendulum-v1", policy_loss=registered, backend="accelerated", n_steps=64, batch_size=32)
    assert registered not in accel.ACCELERATED_LOSSES

"""
Reliability: non-finite numbers, interruptions and bad model files never corrupt or half-build a model.
Each test states the failure it guards against.
"""

import io
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback

from sb3_trust import TrustPPO
from sb3_trust.common.safety import NonFiniteError

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")


class FaultyEnv(gym.Wrapper):
    """Pendulum that emits a bad number in the observation or the reward from a given step on."""

    def __init__(self, what: str, value: float, from_step: int) -> None:
        super().__init__(gym.make("Pendulum-v1"))
        self.what, self.value, self.from_step, self.t = what, value, from_step, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t >= self.from_step:
            if self.what == "observation":
                obs = obs.copy()
                obs[1] = self.value
            else:
                reward = self.value
        return obs, reward, terminated, truncated, info


def _params(model) -> list[th.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def _same(a: list[th.Tensor], b: list[th.Tensor]) -> bool:
    return all(th.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "what, value, words",
    [
        ("observation", np.nan, ["observation", "nan"]),
        ("observation", np.inf, ["observation", "inf"]),
        ("reward", np.nan, ["reward", "nan"]),
        ("reward", 1e30, ["value_loss"]),  # finite reward whose squared error overflows float32
    ],
)
def test_non_finite_env_stops_with_a_named_error_and_keeps_weights(tmp_path, what, value, words):
    model = TrustPPO("MlpPolicy", FaultyEnv(what, value, from_step=100), **SMALL)
    model.learn(64)  # one clean rollout, no update yet: the fault starts at step 100
    before = _params(model)
    with pytest.raises(NonFiniteError) as excinfo:
        model.learn(192, reset_num_timesteps=False)
    message = str(excinfo.value)
    for word in words:
        assert word in message, message
    assert "timestep" in message
    # The fault is in the 2nd rollout: its update was not applied, the weights are those after the 1st update
    assert _same(before, _params(model))
    model.save(tmp_path / "after_fault.zip")
    loaded = TrustPPO.load(tmp_path / "after_fault.zip", device="cpu")
    assert all(th.isfinite(p).all() for p in loaded.policy.parameters())


def test_huge_finite_rewards_train_with_finite_weights():
    model = TrustPPO("MlpPolicy", FaultyEnv("reward", 1e12, from_step=0), **SMALL)
    model.learn(256)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_skip_mode_warns_skips_and_keeps_training():
    model = TrustPPO("MlpPolicy", FaultyEnv("reward", np.nan, from_step=70), on_non_finite="skip", **SMALL)
    model.learn(64)
    before = _params(model)
    with pytest.warns(UserWarning, match="non-finite reward"):
        model.learn(64, reset_num_timesteps=False)
    assert model._n_skipped_updates == 1
    assert _same(before, _params(model))


def test_runaway_log_std_is_caught_before_it_reaches_the_weights():
    model = TrustPPO("MlpPolicy", "Pendulum-v1", **SMALL)
    model.learn(64)
    with th.no_grad():
        model.policy.log_std.fill_(200.0)  # std = exp(200) = inf in float32
    before = _params(model)
    with pytest.raises(NonFiniteError, match="action"):
        model.learn(64, reset_num_timesteps=False)
    assert _same(before, _params(model))


def test_non_finite_loss_restores_weights_and_optimizer_mid_update():
    """A NaN that only appears in the loss (not in the rollout) after some minibatches were applied."""
    model = TrustPPO("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(64)
    before = _params(model)
    optimizer_before = {k: v["exp_avg"].clone() for k, v in model.policy.optimizer.state_dict()["state"].items()}
    n_updates = model._n_updates
    original_get = model.rollout_buffer.get
    calls = []

    def poisoned_get(batch_size):
        # The minibatches of whichever path trains (reference or accelerator): after 2 were applied, poison the value head
        for rollout_data in original_get(batch_size):
            calls.append(1)
            if len(calls) == 3:
                with th.no_grad():
                    model.policy.value_net.weight.fill_(float("nan"))
            yield rollout_data

    model.rollout_buffer.get = poisoned_get
    with pytest.raises(NonFiniteError, match=r"value_loss|parameters"):
        model.learn(64, reset_num_timesteps=False)
    assert len(calls) >= 3
    assert _same(before, _params(model))
    optimizer_after = {k: v["exp_avg"] for k, v in model.policy.optimizer.state_dict()["state"].items()}
    assert all(th.equal(optimizer_before[k], optimizer_after[k]) for k in optimizer_before)
    assert model._n_updates == n_updates


def test_interrupt_mid_update_restores_and_checkpoint_continues(tmp_path):
    model = TrustPPO("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(64)
    before = _params(model)
    original_get = model.rollout_buffer.get
    calls = []

    def interrupted_get(batch_size):
        for rollout_data in original_get(batch_size):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            yield rollout_data

    model.rollout_buffer.get = interrupted_get
    with pytest.raises(KeyboardInterrupt):
        model.learn(64, reset_num_timesteps=False)
    assert _same(before, _params(model))  # the 2 applied minibatches were rolled back
    del model.rollout_buffer.get
    model.save(tmp_path / "checkpoint.zip")
    loaded = TrustPPO.load(tmp_path / "checkpoint.zip", env=model.get_env(), device="cpu")
    assert _same(before, _params(loaded))
    loaded.learn(64, reset_num_timesteps=False)
    assert not _same(before, _params(loaded))


class RaiseAt(BaseCallback):
    def __init__(self, at_step: int, error: type[BaseException]) -> None:
        super().__init__()
        self.at_step, self.error = at_step, error

    def _on_step(self) -> bool:
        if self.n_calls == self.at_step:
            raise self.error("raised by a callback")
        return True


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_callback_exception_mid_rollout_leaves_a_saveable_model(tmp_path, error):
    model = TrustPPO("MlpPolicy", "CartPole-v1", **SMALL)
    with pytest.raises(error):
        model.learn(256, callback=RaiseAt(100, error))
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    model.save(tmp_path / "interrupted.zip")
    loaded = TrustPPO.load(tmp_path / "interrupted.zip", env=model.get_env(), device="cpu")
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 64


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(clip_range_vf=0.2, vf_clip_mode="max", target_kl=0.02),
        dict(policy_loss="kl_penalty", adaptive_kl_target=0.01),
        dict(policy_loss="kl_penalty", kl_coef=0.3),
        dict(policy_loss="unclipped"),
    ],
)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_seed_same_parameters(env_id, variant):
    runs = [TrustPPO("MlpPolicy", env_id, **SMALL, **variant).learn(192) for _ in range(2)]
    assert _same(_params(runs[0]), _params(runs[1]))
    other_seed = TrustPPO("MlpPolicy", env_id, **{**SMALL, "seed": 1}, **variant).learn(192)
    assert not _same(_params(runs[0]), _params(other_seed))


def test_loading_foreign_truncated_or_corrupted_files_is_a_clear_error(tmp_path):
    good = tmp_path / "good.zip"
    TrustPPO("MlpPolicy", "CartPole-v1", **SMALL).save(good)
    # another library's algorithm (SB3's PPO files are read: tests/test_sb3_files.py)
    foreign = tmp_path / "sb3_a2c.zip"
    A2C("MlpPolicy", "CartPole-v1", n_steps=64).save(foreign)
    with pytest.raises(ValueError, match="saved by another library"):
        TrustPPO.load(foreign)
    # truncated
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TrustPPO.load(truncated)
    # one flipped byte inside the stored parameters
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("policy.pth")
    corrupted = bytearray(data)
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    corrupted[offset] ^= 0xFF
    bad = tmp_path / "corrupted.zip"
    bad.write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TrustPPO.load(bad)
    # not a zip at all, and a file object
    garbage = io.BytesIO(b"not a model")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TrustPPO.load(garbage)
    # the good file still loads, also without the .zip suffix and from a file object
    TrustPPO.load(tmp_path / "good")
    with open(good, "rb") as file:
        TrustPPO.load(file)

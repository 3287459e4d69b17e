"""TrustPPO save/load round-trips predictions and every piece of training state."""

import numpy as np
import pytest
import torch as th

from sb3_trust import CosineSchedule, TrustPPO

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), seed=1, device="cpu")


@pytest.mark.parametrize(
    "env_id, variant",
    [
        ("CartPole-v1", dict(policy_loss="clip", clip_range_vf=0.3, vf_clip_mode="max")),
        ("Pendulum-v1", dict(policy_loss="kl_penalty", adaptive_kl_target=1e-9, kl_coef=0.5)),
        ("Pendulum-v1", dict(policy_loss="kl_penalty", kl_coef=CosineSchedule(2.0, 0.5), ent_coef=CosineSchedule(0.01))),
        ("CartPole-v1", dict(policy_loss="unclipped", backend="reference")),
    ],
)
def test_save_load_round_trip(tmp_path, env_id, variant):
    model = TrustPPO("MlpPolicy", env_id, **SMALL, **variant)
    model.learn(192)
    obs = np.stack([model.observation_space.sample() for _ in range(10)])
    actions, _ = model.predict(obs, deterministic=True)
    path = tmp_path / "model.zip"
    model.save(path)

    loaded = TrustPPO.load(path, env=model.get_env(), device="cpu")
    loaded_actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    names = ("policy_loss", "adaptive_kl_target", "vf_clip_mode", "_kl_coef", "num_timesteps", "_n_updates", "n_epochs")
    for name in (*names, "backend"):
        assert getattr(loaded, name) == getattr(model, name), name
    if variant.get("adaptive_kl_target"):
        # β moved away from its initial value (3 updates, each doubling it) and came back intact
        assert loaded._kl_coef == 4.0
    for schedule in ("clip_range", "ent_coef_schedule", "kl_coef_schedule", "lr_schedule"):
        for progress in (1.0, 0.3):
            assert getattr(loaded, schedule)(progress) == getattr(model, schedule)(progress), schedule
    # optimizer state (Adam moments) round-trips
    for key, value in model.policy.optimizer.state_dict()["state"].items():
        loaded_state = loaded.policy.optimizer.state_dict()["state"][key]
        for name in value:
            th.testing.assert_close(loaded_state[name], value[name])
    # continued training works from the restored state
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 64
    assert loaded._n_updates > model._n_updates
    # the path is chosen again for the loaded model, from its restored `backend`
    assert loaded.train_backend == model.train_backend

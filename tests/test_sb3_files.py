"""
SB3 files in both directions. ``TrustPPO.load`` reads a ``stable_baselines3.PPO`` file and ``TrustTRPO.load`` an
``sb3_contrib.TRPO`` file, and training continues exactly where the other library would have continued: the oracle is
the other library loading the same file and training the same number of steps with the same seed. Files of other
algorithms are refused with a clear message.
"""

import pytest
import torch as th
from sb3_contrib import TRPO
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

from sb3_trust import TrustNPG, TrustPPO, TrustTRPO

SETTINGS = {
    PPO: dict(n_steps=64, batch_size=32, n_epochs=3, learning_rate=1e-3),
    TRPO: dict(n_steps=64, batch_size=32, n_critic_updates=3, learning_rate=1e-3),
}


def _saved_by(cls, env_id: str, path) -> None:
    """The other library trains two updates and saves (the optimizer then has state to carry over)."""
    model = cls("MlpPolicy", env_id, policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu", **SETTINGS[cls])
    model.learn(128)
    model.save(path)


def _continued(cls, env_id: str, path, **kwargs):
    """Load ``path`` with ``cls`` on a fresh seeded env, seed everything the same way, and train three more updates."""
    env = make_vec_env(env_id, n_envs=1, seed=5)
    model = cls.load(path, env=env, device="cpu", **kwargs)
    model.set_random_seed(7)
    model.learn(192, reset_num_timesteps=False)
    return model


def _assert_same_training_state(ours, theirs) -> None:
    assert ours.num_timesteps == theirs.num_timesteps == 320
    assert ours._n_updates == theirs._n_updates
    their_params = theirs.policy.state_dict()
    for name, value in ours.policy.state_dict().items():
        th.testing.assert_close(value, their_params[name], rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")
    our_state = ours.policy.optimizer.state_dict()["state"]
    their_state = theirs.policy.optimizer.state_dict()["state"]
    assert our_state.keys() == their_state.keys()
    for index, entries in our_state.items():
        for key, value in entries.items():
            th.testing.assert_close(value, their_state[index][key], rtol=1e-6, atol=1e-7, msg=f"Adam {key} of {index}")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("theirs_cls, ours_cls", [(PPO, TrustPPO), (TRPO, TrustTRPO)])
def test_our_class_continues_the_other_librarys_file(tmp_path, env_id, theirs_cls, ours_cls):
    path = tmp_path / "theirs.zip"
    _saved_by(theirs_cls, env_id, path)
    theirs = _continued(theirs_cls, env_id, path)
    # The reference path is the one held to the other library (the accelerator is held to the reference path)
    ours = _continued(ours_cls, env_id, path, backend="reference")
    assert ours.batch_size == 32
    if ours_cls is TrustPPO:
        assert ours.policy_loss == "clip" and ours.n_epochs == 3
    else:
        # contrib's KL convention, whose updates are contrib's, unless asked otherwise
        assert ours.kl_convention == "contrib" and ours.step_rule == "line_search"
        assert TrustTRPO.load(path, kl_convention="paper").kl_convention == "paper"
        assert TrustNPG.load(path).step_rule == "npg"
    _assert_same_training_state(ours, theirs)
    # Saved again, it is our file
    ours.save(tmp_path / "ours.zip")
    assert ours_cls.load(tmp_path / "ours.zip")._trust_algorithm == ours_cls._trust_family


@pytest.mark.parametrize("theirs_cls, ours_cls", [(PPO, TrustPPO), (TRPO, TrustTRPO)])
def test_default_backend_continues_the_file_too(tmp_path, theirs_cls, ours_cls):
    """The default backend (the accelerator where it runs), within the accelerator's float32 rounding."""
    path = tmp_path / "theirs.zip"
    _saved_by(theirs_cls, "Pendulum-v1", path)
    theirs = _continued(theirs_cls, "Pendulum-v1", path)
    ours = _continued(ours_cls, "Pendulum-v1", path)
    their_params = theirs.policy.state_dict()
    for name, value in ours.policy.state_dict().items():
        th.testing.assert_close(value, their_params[name], rtol=1e-4, atol=1e-5, msg=f"parameter {name} differs")


@pytest.mark.parametrize(
    "cls, other, make",
    [
        (TrustPPO, "TRPO", lambda: TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32)),
        (TrustPPO, "A2C", lambda: A2C("MlpPolicy", "CartPole-v1")),
        (TrustPPO, "SAC", lambda: SAC("MlpPolicy", "Pendulum-v1", buffer_size=100)),
        (TrustTRPO, "PPO", lambda: PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32)),
        (TrustTRPO, "A2C", lambda: A2C("MlpPolicy", "CartPole-v1")),
    ],
)
def test_files_of_other_algorithms_are_refused(tmp_path, cls, other, make):
    make().save(tmp_path / "other.zip")
    readable = "stable_baselines3.PPO" if cls is TrustPPO else "sb3_contrib.TRPO"
    with pytest.raises(ValueError, match=f"saved by another library's algorithm.*or by {readable}"):
        cls.load(tmp_path / "other.zip")

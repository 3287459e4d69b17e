"""
Learning tests: TrustPPO reaches the score thresholds of the issue with rl-zoo3's own ppo.yml configs
(read from the installed rl-zoo3, so they cannot drift from the zoo).
"""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from benchmarks.zoo_configs import load_zoo_config
from sb3_trust import TrustPPO


def _train_and_evaluate(env_id: str, seed: int, **variant) -> float:
    config = load_zoo_config("ppo", env_id)
    assert config.normalize is None
    env = make_vec_env(env_id, n_envs=config.n_envs, seed=seed)
    model = TrustPPO(config.policy, env, seed=seed, device="cpu", **config.kwargs, **variant)
    model.learn(config.n_timesteps)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return mean_return


@pytest.mark.expensive
@pytest.mark.parametrize(
    "variant",
    [dict(policy_loss="clip"), dict(policy_loss="kl_penalty", adaptive_kl_target=0.01, kl_coef=1.0)],
    ids=["clip", "adaptive-kl"],
)
def test_cartpole_reaches_475(variant):
    # The median of 3 seeds: a single seed of either SB3 PPO or TrustPPO occasionally collapses (about 1 in 10 here,
    # e.g. seed 14 on both the closed-form and the autograd gradient path of the adaptive-KL variant)
    scores = [_train_and_evaluate("CartPole-v1", seed=seed, **variant) for seed in range(3)]
    assert np.median(scores) >= 475, scores


@pytest.mark.expensive
def test_pendulum_clip_reaches_minus_400():
    # the zoo's published agent scores -172; a random policy about -1200
    assert _train_and_evaluate("Pendulum-v1", seed=0) >= -400

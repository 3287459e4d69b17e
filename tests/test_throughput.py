"""
Tests of the arithmetic floor of benchmarks/throughput.py: the matrix products a PPO run must compute, checked
against a hand count, and the widths read off an SB3 policy.
"""

import math

import pytest
from stable_baselines3 import PPO

from benchmarks.throughput import chain_products, mlp_widths, ppo_update_products, time_products


def test_chain_products_forward_and_backward():
    # [4, 64, 64, 2] on 256 rows: forward x @ Wᵀ per layer; weight gradient gᵀ @ x per layer; input gradient g @ W
    # for the second and third layers only (the observations need no gradient)
    assert chain_products([4, 64, 64, 2], 256, backward=False) == [(256, 4, 64), (256, 64, 64), (256, 64, 2)]
    assert chain_products([4, 64, 64, 2], 256, backward=True) == [
        (256, 4, 64),
        (64, 256, 4),
        (256, 64, 64),
        (64, 256, 64),
        (256, 64, 64),
        (256, 64, 2),
        (2, 256, 64),
        (256, 2, 64),
    ]


def test_ppo_update_products_multiply_adds_by_hand():
    # actor 3 -> 5 -> 2, critic 3 -> 5 -> 1; 2 envs x 4 steps = 8 samples per rollout, so 10 timesteps take 2 rollouts;
    # minibatches of 3, 3 and 2 rows; 2 epochs.
    counts = ppo_update_products([3, 5, 2], [3, 5, 1], n_envs=2, n_steps=4, batch_size=3, n_epochs=2, timesteps=10)
    multiply_adds = sum(rows * inner * columns * count for (rows, inner, columns), count in counts.items())
    # Collection: per step and 2 rows, actor 2·(3·5 + 5·2) = 50, critic 2·(3·5 + 5·1) = 40; 2 rollouts x 4 steps.
    collection = (50 + 40) * 2 * 4
    # Per minibatch row: actor forward 25, weight gradients 25, input gradient of the head 10; critic 20, 20, 5.
    # 8 rows per epoch, 2 epochs, 2 updates.
    update = (25 + 25 + 10 + 20 + 20 + 5) * 8 * 2 * 2
    assert multiply_adds == collection + update == 4080
    # the last minibatch is counted with its own size: the first layers' weight gradients, gᵀ [5, rows] @ x [rows, 3],
    # of actor and critic, 2 epochs, 2 updates (one minibatch of 2 rows, two of 3)
    assert counts[(5, 2, 3)] == 2 * 2 * 2
    assert counts[(5, 3, 3)] == 2 * 2 * 2 * 2


def test_mlp_widths_of_an_sb3_policy():
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=dict(pi=[32, 16], vf=[8])), device="cpu")
    policy = model.policy
    assert mlp_widths(policy.mlp_extractor.policy_net, policy.action_net) == [4, 32, 16, 2]
    assert mlp_widths(policy.mlp_extractor.value_net, policy.value_net) == [4, 8, 1]
    no_hidden = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[]), device="cpu").policy
    assert mlp_widths(no_hidden.mlp_extractor.policy_net, no_hidden.action_net) == [4, 2]


def test_time_products_skips_zero_counts_times_positive_ones_and_rejects_negative_ones():
    assert time_products({(64, 64, 64): 0}, seconds_per_product=0.01) == 0.0
    seconds = time_products({(64, 64, 64): 1000}, seconds_per_product=0.01)
    assert math.isfinite(seconds) and seconds > 0
    with pytest.raises(ValueError):
        time_products({(64, 64, 64): -1})

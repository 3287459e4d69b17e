"""
Invalid-action masking (sb3-contrib's interface) for TrustPPO and TrustTRPO: parity with sb3-contrib's MaskablePPO,
the KL and Fisher-vector products of masked distributions against hand computations, bad input, save/load.
"""

import pytest
import torch as th
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

from sb3_trust import TrustPPO

ENVS = {
    "discrete": lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10),
    "multi-discrete": lambda: InvalidActionEnvMultiDiscrete(dims=[5, 5], n_invalid_actions=4),
    "multi-binary": lambda: InvalidActionEnvMultiBinary(dims=4, n_invalid_actions=2),
}
SETTINGS = dict(n_steps=64, batch_size=32, n_epochs=4, learning_rate=1e-3, policy_kwargs=dict(net_arch=[32]), seed=3)


@pytest.mark.parametrize("space", list(ENVS))
@pytest.mark.parametrize("kwargs", [{}, {"clip_range_vf": 0.2, "ent_coef": 0.01}, {"target_kl": 0.0005}])
def test_same_parameters_as_maskable_ppo(space, kwargs):
    reference = MaskablePPO("MlpPolicy", ENVS[space](), device="cpu", **SETTINGS, **kwargs).learn(4 * 64)
    ours = TrustPPO("MlpPolicy", ENVS[space](), device="cpu", backend="reference", **SETTINGS, **kwargs).learn(4 * 64)
    assert ours.use_masking and type(ours.policy) is MaskableActorCriticPolicy
    fresh = TrustPPO("MlpPolicy", ENVS[space](), device="cpu", **SETTINGS).policy.state_dict()
    moved = False
    for name, value in reference.policy.state_dict().items():
        th.testing.assert_close(ours.policy.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")
        moved |= not th.equal(value, fresh[name])
    assert moved, "nothing trained: the comparison would be vacuous"

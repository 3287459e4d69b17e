"""
The policies the accelerator runs, described for its kernels: which Linear layers and activations, in what order, and
NumPy views of the policy's own tensors (see the layout in ``sb3_trust.accel.kernels``).

This module needs only torch and SB3 until a ``PackedPolicy`` is built (that needs Numba).
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn

# Activation codes of the kernels (NONE, TANH, RELU in sb3_trust.accel.kernels)
_ACTIVATION_CODES: dict[type[nn.Module], int] = {nn.Tanh: 1, nn.ReLU: 2}

# A Linear layer and the code of the activation after it
Layer = tuple[nn.Linear, int]


def _branch(sequential: nn.Module, head: nn.Module, name: str) -> list[Layer] | str:
    """
    :param sequential: ``mlp_extractor.policy_net`` or ``value_net``
    :param head: ``action_net`` or ``value_net``
    :param name: the branch's name, for the reason
    :return: its Linear layers (the head last), each with the activation after it, or why the kernels cannot run it
    """
    if type(sequential) is not nn.Sequential:
        return f"mlp_extractor.{name} is a {type(sequential).__name__} (the accelerator runs nn.Sequential)"
    layers: list[Layer] = []
    for module in [*sequential, head]:
        if type(module) is nn.Linear:
            if module.bias is None:
                return f"a Linear layer without bias in {name}"
            layers.append((module, 0))
        elif type(module) in _ACTIVATION_CODES and layers and layers[-1][1] == 0 and module is not head:
            layers[-1] = (layers[-1][0], _ACTIVATION_CODES[type(module)])
        else:
            kind = type(module).__name__
            return f"layer {kind} in {name} (the accelerator runs Linear layers, each followed by one Tanh or ReLU)"
    if layers[-1][0] is not head:
        return f"{name}'s head is not an nn.Linear"
    return layers


def _distribution_reason(policy: ActorCriticPolicy) -> str | None:
    """:return: why the kernels cannot run the policy's action distribution, or ``None``"""
    if getattr(policy, "use_sde", False) or policy.squash_output:
        return "gSDE (the accelerator runs a Categorical or diagonal Gaussian distribution)"
    distribution = type(policy.action_dist)
    if distribution is CategoricalDistribution:
        if not isinstance(policy.action_space, spaces.Discrete):
            return f"action space {policy.action_space} with a Categorical distribution"
    elif distribution is DiagGaussianDistribution:
        if not isinstance(policy.action_space, spaces.Box) or len(policy.action_space.shape) != 1:
            return f"action space {policy.action_space} (the accelerator runs Discrete or a 1-d Box)"
    else:
        return f"action distribution {distribution.__name__} (the accelerator runs Categorical and DiagGaussian)"
    return None


def _parameters_reason(policy: ActorCriticPolicy) -> str | None:
    """:return: why the kernels cannot work on the policy's parameters, or ``None``"""
    for name, param in policy.named_parameters():
        if param.dtype != th.float32:
            return f"parameter {name} is {param.dtype} (the accelerator runs float32)"
        if param.device.type != "cpu":
            return f"parameter {name} on {param.device} (the accelerator runs on the CPU)"
        if not param.is_contiguous():
            return f"parameter {name} is not contiguous"
    own = {id(param) for param in policy_parameters(policy)}
    if any(id(param) not in own for param in policy.parameters()):
        return "the policy has parameters outside its actor, critic and log_std"
    return None


def policy_reason(policy: Any) -> str | None:
    """
    :param policy: a policy
    :return: why the accelerator cannot run it, or ``None``
    """
    if type(policy) is not ActorCriticPolicy:
        return f"policy class {type(policy).__name__} (the accelerator runs MlpPolicy)"
    if not isinstance(policy.observation_space, spaces.Box) or len(policy.observation_space.shape) != 1:
        return f"observation space {policy.observation_space} (the accelerator runs a 1-d Box)"
    extractors = [policy.features_extractor]
    if not policy.share_features_extractor:
        extractors += [policy.pi_features_extractor, policy.vf_features_extractor]
    for extractor in extractors:
        if type(extractor) is not FlattenExtractor:
            return f"features extractor {type(extractor).__name__} (the accelerator runs FlattenExtractor)"
    if type(policy.mlp_extractor) is not MlpExtractor:
        return f"mlp_extractor {type(policy.mlp_extractor).__name__} (the accelerator runs MlpExtractor)"
    reason = _distribution_reason(policy)
    for sequential, head, name in (
        (policy.mlp_extractor.policy_net, policy.action_net, "policy_net"),
        (policy.mlp_extractor.value_net, policy.value_net, "value_net"),
    ):
        layers = _branch(sequential, head, name)
        if reason is None and isinstance(layers, str):
            reason = layers
    return reason or _parameters_reason(policy)


def branches(policy: ActorCriticPolicy) -> tuple[list[Layer], list[Layer]]:
    """:return: the actor's and the critic's layers (for a policy that ``policy_reason`` accepts)"""
    actor = _branch(policy.mlp_extractor.policy_net, policy.action_net, "policy_net")
    critic = _branch(policy.mlp_extractor.value_net, policy.value_net, "value_net")
    assert not isinstance(actor, str) and not isinstance(critic, str)
    return actor, critic


def policy_parameters(policy: ActorCriticPolicy) -> list[th.Tensor]:
    """:return: the parameters in the kernels' order: actor [W, b]..., critic [W, b]..., ``log_std`` (Gaussian)"""
    params: list[th.Tensor] = []
    for branch in branches(policy):
        for linear, _ in branch:
            params += [linear.weight, linear.bias]
    if isinstance(policy.action_dist, DiagGaussianDistribution):
        params.append(policy.log_std)
    return params


def as_2d(tensor: th.Tensor) -> np.ndarray:
    """:return: a 2-d float32 NumPy view of a CPU tensor (a vector as one row, a scalar as [1, 1])"""
    array = tensor.detach().numpy()
    if array.ndim != 2:
        array = array.reshape(1, -1)
    assert np.shares_memory(array, tensor.detach().numpy()) and array.flags.c_contiguous
    return array


class PackedPolicy:
    """
    A policy as the kernels see it: its layout and the typed list of views of its parameters.

    :param policy: a policy that ``policy_reason`` accepts
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        from sb3_trust.accel.kernels import array_list

        self.policy = policy
        actor, critic = branches(policy)
        self.categorical = isinstance(policy.action_dist, CategoricalDistribution)
        self.n_out = actor[-1][0].out_features
        self.layout = np.array(
            [len(actor), len(critic), int(self.categorical), self.n_out] + [code for _, code in actor + critic],
            dtype=np.int64,
        )
        self.params = policy_parameters(policy)
        self.views = [as_2d(param) for param in self.params]
        self.arrays = array_list(self.views)
        self.data_pointers = self.pointers()
        self.n_actor_params = 2 * len(actor)

    def pointers(self) -> list[int]:
        """:return: the data pointers of the parameters (they change if a parameter's tensor is replaced)"""
        return [param.data_ptr() for param in self.params]

    def is_current(self, policy: ActorCriticPolicy) -> bool:
        """:return: whether this packing still views ``policy``'s parameters"""
        return (
            policy is self.policy
            and self.pointers() == self.data_pointers
            and [id(p) for p in policy_parameters(policy)] == [id(p) for p in self.params]
        )

    def old_actor(self, old_policy: ActorCriticPolicy) -> Any:
        """:return: the typed list of another policy's actor parameters (and ``log_std``), same structure"""
        from sb3_trust.accel.kernels import array_list

        params = policy_parameters(old_policy)
        actor = params[: self.n_actor_params] + ([] if self.categorical else [params[-1]])
        return array_list([np.ascontiguousarray(as_2d(param.float().cpu())) for param in actor])

"""
The Numba kernels of TrustTRPO's update: the actor step's quantities at θ_old (the surrogate, its gradient and the
damped Fisher-vector product in closed form), the line search's evaluation of candidate parameters, and one critic
minibatch (MSE regression on the returns, then torch's Adam step). Layout and arrays as in ``sb3_trust.accel.kernels``,
whose forward pass, head, backward pass, KL terms and Adam step these reuse.

Flat vectors (gradient, Fisher-vector products) are laid out as the policy's actor parameters in the policy's own order
(``policy.parameters()``, as the reference path finds them); ``offsets`` gives where each actor parameter starts in
them, in the kernels' order: ``[W, b]`` of each actor Linear layer, then ``log_std`` (Gaussian; 0 for a Categorical).

The Fisher matrix ``F`` is the Hessian of the mean KL at θ_old. Both KL(π_old ‖ π) and KL(π ‖ π_old) have it for their
Hessian there, and the actor's output moves the KL only through its second derivative there (its first vanishes), so
``F = mean_s Jᵀ H J`` with ``J`` the Jacobian of the actor's output with respect to the parameters and ``H`` the
Hessian of the KL with respect to that output: ``diag(1/σ²)`` for a diagonal Gaussian's mean (and ``2`` for each
``log_std``, which the mean does not depend on), ``diag(p) - p pᵀ`` for a Categorical's logits; times ``kl_scale``
(``1/k`` for a KL averaged over the ``k`` action dimensions, as sb3-contrib's). ``F v`` is then one forward-mode pass
(``J v``) and one reverse pass (``Jᵀ (H J v)``) through the actor's MLP.
"""

import math

import numpy as np
from numba import njit
from numba.typed import List

from sb3_trust.accel.kernels import (
    L_ACTIVATIONS,
    L_CATEGORICAL,
    L_N_PI,
    L_N_VF,
    RELU,
    TANH,
    _adam,
    _categorical_kl,
    _gaussian_kl,
    _head,
    _mlp_backward,
    _mlp_forward,
    _value_terms,
    grad_views,
    log_prob_backward,
)

# ``critic_minibatch``'s return codes
CRITIC_APPLIED, CRITIC_NON_FINITE = 0, 1
# ``evaluate``'s results
R_SURROGATE, R_CONSTRAINT_KL, R_PAPER_KL = 0, 1, 2
N_RESULTS = 3


@njit(cache=True, error_model="numpy")
def _flat_views(flat, arrays, n_pi, log_std_index, offsets):  # type: ignore[no-untyped-def]
    """:return: views of ``flat`` shaped as the actor's parameters, in the kernels' order (``log_std`` last, if any)"""
    views = []
    for index in range(2 * n_pi):
        rows, cols = arrays[index].shape
        views.append(flat[offsets[index] : offsets[index] + rows * cols].reshape(rows, cols))
    if log_std_index >= 0:
        cols = arrays[log_std_index].shape[1]
        start = offsets[2 * n_pi]
        views.append(flat[start : start + cols].reshape(1, cols))
    return views


@njit(cache=True, error_model="numpy")
def _surrogate(log_prob, old_log_prob, advantages, grad_log_prob):  # type: ignore[no-untyped-def]
    """
    :param grad_log_prob: out, the derivative of the surrogate with respect to each log-likelihood (or empty)
    :return: the surrogate ``mean(A · exp(log π - log π_old))``
    """
    n = log_prob.shape[0]
    inv_n = np.float32(1.0 / n)
    total = 0.0
    for i in range(n):
        ratio = np.exp(log_prob[i] - old_log_prob[i])
        total += advantages[i] * ratio
        if grad_log_prob.shape[0] == n:
            grad_log_prob[i] = inv_n * advantages[i] * ratio
    return total / n


@njit(cache=True, error_model="numpy")
def actor_problem(arrays, layout, obs, actions, old_log_prob, advantages, offsets, grad):  # type: ignore[no-untyped-def]
    """
    The actor step's quantities at the current parameters θ_old.

    :param obs: [n, obs_dim] float32; ``actions`` [n, n_out] (Discrete: [n, 1], the index as a float)
    :param old_log_prob: [n]; ``advantages`` [n] (already normalised if so configured)
    :param grad: out, the flat gradient of the surrogate (zeroed here)
    :return: the surrogate, the actor's layer outputs (its input first, for ``fisher_vector_product``), and the
        distribution's parameters (normalised logits and probabilities, or the mean and the std [1, k])
    """
    n_pi, n_vf, categorical = layout[L_N_PI], layout[L_N_VF], layout[L_CATEGORICAL] != 0
    acts_pi = layout[L_ACTIVATIONS : L_ACTIVATIONS + n_pi]
    log_std_index = -1 if categorical else 2 * (n_pi + n_vf)
    n = obs.shape[0]
    actor = _mlp_forward(arrays, 0, n_pi, acts_pi, obs)
    out = actor[-1]
    k = out.shape[1]
    log_prob, _, param_a, param_b = _head(out, arrays, 2 * (n_pi + n_vf), categorical, actions)
    grad_log_prob = np.empty(n, np.float32)
    surrogate = _surrogate(log_prob, old_log_prob, advantages, grad_log_prob)
    grad_out = np.zeros((n, k), np.float32)
    grad_log_std = np.zeros((1, k), np.float32)
    log_prob_backward(categorical, actions, param_a, param_b, grad_log_prob, grad_out, grad_log_std)
    grad[:] = 0.0
    grads = _flat_views(grad, arrays, n_pi, log_std_index, offsets)
    _mlp_backward(arrays, grads, 0, n_pi, acts_pi, actor, grad_out)
    if not categorical:
        grads[2 * n_pi][0, :] = grad_log_std[0, :]
    outputs = List()
    for layer_output in actor:
        outputs.append(layer_output)
    return surrogate, outputs, param_a, param_b


@njit(cache=True, error_model="numpy")
def _jvp(arrays, n_pi, acts_pi, outputs, v, tangents, scratch):  # type: ignore[no-untyped-def]
    """
    Forward mode: the tangent of each actor layer's output along ``v`` (the input's is 0), into ``tangents``;
    ``scratch`` is as ``tangents``, preallocated (a rollout's rows make a temporary too large for malloc's free lists).
    """
    for layer in range(n_pi):
        index = 2 * layer
        tangent = tangents[layer]
        np.dot(outputs[layer], v[index].T, tangent)
        carried = scratch[layer]  # the input's tangent through the weights (0 for the first layer)
        if layer > 0:
            np.dot(tangents[layer - 1], arrays[index].T, carried)
        else:
            carried[:, :] = 0.0
        bias = v[index + 1]
        y = outputs[layer + 1]
        rows, cols = tangent.shape
        activation = acts_pi[layer]
        for i in range(rows):
            for j in range(cols):
                t = tangent[i, j] + carried[i, j] + bias[0, j]
                if activation == TANH:
                    t = t * (np.float32(1.0) - y[i, j] * y[i, j])
                elif activation == RELU and not y[i, j] > 0:
                    t = np.float32(0.0)
                tangent[i, j] = t


@njit(cache=True, error_model="numpy")
def _kl_hessian_product(head, param_b, categorical, scale):  # type: ignore[no-untyped-def]
    """``head = scale · H head`` in place: ``H = diag(p) - p pᵀ`` per state (Categorical) or ``diag(1/σ²)``."""
    n, k = head.shape
    if categorical:
        for i in range(n):
            dot = 0.0
            for j in range(k):
                dot += param_b[i, j] * head[i, j]
            for j in range(k):
                head[i, j] = np.float32(scale * (param_b[i, j] * (head[i, j] - dot)))
        return
    for j in range(k):
        weight = np.float32(scale / (float(param_b[0, j]) * float(param_b[0, j])))
        for i in range(n):
            head[i, j] *= weight


@njit(cache=True, error_model="numpy")
def fisher_vector_product(  # type: ignore[no-untyped-def]
    arrays, layout, outputs, param_b, vector, offsets, out, damping, kl_scale, tangents, scratch
):
    """
    ``out = (F + damping I) vector`` at θ_old (see the module's docstring).

    :param outputs: the actor's layer outputs at θ_old (from ``actor_problem``)
    :param param_b: the probabilities [n, k] (Categorical) or the std [1, k] (Gaussian) at θ_old
    :param vector: flat float32, laid out as the actor's parameters
    :param out: flat float32 result, same layout
    :param kl_scale: the KL's factor (``1 / k`` for a KL averaged over a Gaussian's ``k`` dimensions, else 1)
    :param tangents: workspace, one [n, width] float32 array per actor layer; ``scratch`` another
    """
    n_pi, n_vf, categorical = layout[L_N_PI], layout[L_N_VF], layout[L_CATEGORICAL] != 0
    acts_pi = layout[L_ACTIVATIONS : L_ACTIVATIONS + n_pi]
    log_std_index = -1 if categorical else 2 * (n_pi + n_vf)
    n = outputs[0].shape[0]
    v = _flat_views(vector, arrays, n_pi, log_std_index, offsets)
    _jvp(arrays, n_pi, acts_pi, outputs, v, tangents, scratch)
    # H (J v), with the mean's 1/n: the gradient of the output to pull back through the MLP
    head = tangents[n_pi - 1]
    k = head.shape[1]
    _kl_hessian_product(head, param_b, categorical, kl_scale / n)
    result = _flat_views(out, arrays, n_pi, log_std_index, offsets)
    _mlp_backward(arrays, result, 0, n_pi, acts_pi, outputs, head)
    if not categorical:
        log_std_weight = np.float32(2.0 * kl_scale)
        for j in range(k):
            result[2 * n_pi][0, j] = log_std_weight * v[2 * n_pi][0, j]
    damping32 = np.float32(damping)
    for i in range(out.shape[0]):
        out[i] += damping32 * vector[i]


@njit(cache=True, error_model="numpy")
def evaluate(  # type: ignore[no-untyped-def]
    arrays, layout, obs, actions, old_log_prob, advantages, old_a, old_b, old_log_std, contrib, results
):
    """
    The line search's evaluation at the current parameters: the surrogate, the constraint KL (``contrib``:
    KL(π ‖ π_old) averaged over states and Gaussian dimensions, else KL(π_old ‖ π) summed over dimensions, averaged
    over states) and KL(π_old ‖ π) (the logged one), written into ``results`` (see ``R_*``).

    :param old_a: π_old's normalised logits, or its mean (from ``actor_problem``)
    :param old_b: π_old's probabilities, or its std [1, k]
    :param old_log_std: π_old's ``log_std`` [1, k] (Gaussian; unused for a Categorical)
    """
    n_pi, n_vf, categorical = layout[L_N_PI], layout[L_N_VF], layout[L_CATEGORICAL] != 0
    acts_pi = layout[L_ACTIVATIONS : L_ACTIVATIONS + n_pi]
    log_std_index = 2 * (n_pi + n_vf)
    n = obs.shape[0]
    out = _mlp_forward(arrays, 0, n_pi, acts_pi, obs)[-1]
    k = out.shape[1]
    log_prob, _, param_a, param_b = _head(out, arrays, log_std_index, categorical, actions)
    results[R_SURROGATE] = _surrogate(log_prob, old_log_prob, advantages, np.empty(0, np.float32))
    # The KL helpers also add a gradient: here with a coefficient 0, into scratch arrays
    scratch = np.zeros((n, k), np.float32)
    scratch_log_std = np.zeros((1, k), np.float32)
    if categorical:
        paper = _categorical_kl(param_a, param_b, old_a, old_b, scratch, 0.0)
        reverse = _categorical_kl(old_a, old_b, param_a, param_b, scratch, 0.0) if contrib else paper
    else:
        paper = _gaussian_kl(out, param_b, old_a, old_log_std, scratch, scratch_log_std, 0.0)
        log_std = arrays[log_std_index]
        reverse = _gaussian_kl(old_a, old_b, out, log_std, scratch, scratch_log_std, 0.0) / k if contrib else paper
    results[R_CONSTRAINT_KL] = reverse if contrib else paper
    results[R_PAPER_KL] = paper


@njit(cache=True, error_model="numpy")
def critic_minibatch(arrays, layout, obs, returns, hyper, grad_buffer, loss):  # type: ignore[no-untyped-def]
    """
    One critic minibatch: ``mean((R - V(s))²)``, its gradient, and torch's Adam step on the critic's parameters, in place.

    :param arrays: the critic's ``[W, b]`` of each Linear layer, then their ``exp_avg``, ``exp_avg_sq`` and ``step``
    :param obs: [n, obs_dim] float32; ``returns`` [n]
    :param hyper: [n_critic_params, N_HYPER] Adam's hyper-parameters
    :param grad_buffer: float32 workspace as long as the critic's parameters together
    :param loss: out, [1]
    :return: ``CRITIC_APPLIED``, or ``CRITIC_NON_FINITE`` (a non-finite loss: nothing changed)
    """
    n_pi, n_vf = layout[L_N_PI], layout[L_N_VF]
    acts_vf = layout[L_ACTIVATIONS + n_pi : L_ACTIVATIONS + n_pi + n_vf]
    critic = _mlp_forward(arrays, 0, n_vf, acts_vf, obs)
    values = critic[-1][:, 0]
    grad_values = np.empty((obs.shape[0], 1), np.float32)
    loss[0] = _value_terms(values, values, returns, np.nan, False, 1.0, grad_values)[0]  # unclipped MSE
    if not math.isfinite(loss[0]):
        return CRITIC_NON_FINITE
    grads = grad_views(grad_buffer, arrays, 2 * n_vf)
    _mlp_backward(arrays, grads, 0, n_vf, acts_vf, critic, grad_values)
    _adam(arrays, grads, 2 * n_vf, hyper, np.float32(1.0))
    return CRITIC_APPLIED


@njit(cache=True, error_model="numpy")
def critic_epochs(arrays, layout, obs, returns, permutations, batch_size, hyper, grad_buffer, losses):  # type: ignore[no-untyped-def]
    """
    The critic's epochs: for each row of ``permutations``, ``critic_minibatch`` on its consecutive slices of
    ``batch_size`` samples (the last one shorter), as SB3's ``RolloutBuffer.get(batch_size)`` draws them.

    :param obs: the whole rollout's observations [N, obs_dim] float32; ``returns`` [N]
    :param permutations: [n_epochs, N] int64, one permutation of the samples per epoch
    :param losses: out, the loss of each minibatch in order
    :return: the number of minibatches skipped because of a non-finite loss
    """
    n_epochs, size = permutations.shape
    loss = np.zeros(1)
    count = 0
    n_skipped = 0
    for epoch in range(n_epochs):
        for start in range(0, size, batch_size):
            rows = min(batch_size, size - start)
            batch_obs = np.empty((rows, obs.shape[1]), np.float32)
            batch_returns = np.empty(rows, np.float32)
            for row in range(rows):
                index = permutations[epoch, start + row]
                batch_obs[row, :] = obs[index, :]
                batch_returns[row] = returns[index]
            if critic_minibatch(arrays, layout, batch_obs, batch_returns, hyper, grad_buffer, loss) != CRITIC_APPLIED:
                n_skipped += 1
            losses[count] = loss[0]
            count += 1
    return n_skipped

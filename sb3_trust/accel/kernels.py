"""
The Numba kernels of the accelerator: the policy's forward pass for rollout collection, and one whole TrustPPO
minibatch step (forward, loss, hand-derived backward, global gradient-norm clipping, torch's Adam) in one call.

The networks are described by a ``layout`` (int64) and a typed list of 2-d float32 arrays that are NumPy views of the
policy's own tensors (see ``sb3_trust.accel.network``), so the kernels always read the current weights and write the
parameters and the optimizer's state in place. A single signature serves every depth, width and head, so one
compilation (cached on disk) covers all policies.

``layout``: ``[n_pi, n_vf, categorical, n_out, activation of each actor Linear..., activation of each critic
Linear...]`` where ``n_pi`` and ``n_vf`` count the Linear layers of each branch including its head (``action_net``,
``value_net``, the last), and an activation code is 0 (none), 1 (tanh) or 2 (ReLU).

``arrays`` (the typed list): the parameters ``[W, b]`` of each actor Linear, then of each critic Linear, then ``log_std``
(Gaussian only), biases and ``log_std`` as ``(1, n)`` views; for a minibatch step, followed by the same number of
``exp_avg``, ``exp_avg_sq`` and ``step`` (``(1, 1)``) arrays of Adam's state.

Element-wise arithmetic is float32 in the order torch's operations use, and the gradients follow autograd's rules
(``clamp`` passes the gradient at its bounds, ``min``/``max`` of equal terms split it), so results agree with the
reference path to rounding. Reductions (means, norms, bias gradients) accumulate in float64; matrix products are
SciPy's BLAS (``np.dot``); ``tanh`` is a vectorised rational approximation within a few float32 ulp (``_tanh_inplace``).
All kernels use ``error_model="numpy"``: a division by zero gives inf/NaN, as in torch, instead of raising.
"""

import math

import numpy as np
from numba import njit
from numba.typed import List

NONE, TANH, RELU = 0, 1, 2
L_N_PI, L_N_VF, L_CATEGORICAL, L_N_OUT, L_ACTIVATIONS = 0, 1, 2, 3, 4

# Indices of the settings vector of ``ppo_minibatch``
S_LOSS, S_CLIP, S_KL_COEF, S_CLIP_VF, S_VF_MAX, S_ENT_COEF, S_VF_COEF = 0, 1, 2, 3, 4, 5, 6
S_NORMALIZE, S_MAX_GRAD_NORM, S_MAX_KL, S_STATS_CLIP = 7, 8, 9, 10
N_SETTINGS = 11
LOSS_CODES = {"clip": 0, "unclipped": 1, "kl_penalty": 2}
# Columns of the Adam hyper-parameters (one row per parameter, from its param group)
H_LR, H_BETA1, H_BETA2, H_EPS, H_WEIGHT_DECAY, H_DECOUPLED = 0, 1, 2, 3, 4, 5
N_HYPER = 6
# The stats vector written by ``ppo_minibatch``
STATS = ("policy_loss", "value_loss", "entropy_loss", "loss", "approx_kl", "clip_fraction", "value_clip_fraction")
STATS += ("ratio_max", "ratio_mean", "gradient_norm")
N_STATS = len(STATS)
# Return codes of ``ppo_minibatch``: applied, not applied (k3 early stop), or the first non-finite quantity
APPLIED, EARLY_STOP = 0, 1
NON_FINITE = {2: "policy_loss", 3: "value_loss", 4: "entropy_loss", 5: "gradient_norm"}

# Collection modes of ``collect_forward``
GAUSSIAN_SAMPLE, CATEGORICAL_SAMPLE, VALUES_ONLY = 0, 1, 2

_LOG_SQRT_2PI = np.float32(math.log(math.sqrt(2 * math.pi)))
_ENTROPY_CONST = np.float32(0.5 + 0.5 * math.log(2 * math.pi))
_FLOAT32_MIN = np.float32(np.finfo(np.float32).min)


@njit(cache=True)
def _typed_list(arrays):  # type: ignore[no-untyped-def]
    out = List()
    for array in arrays:
        out.append(array)
    return out


def array_list(arrays: list[np.ndarray]) -> List:
    """
    :param arrays: 2-d float32 C-contiguous arrays
    :return: a typed list of them (the same memory). Built in a cached kernel: building it from Python would compile
        Numba's list methods in every process.
    """
    return _typed_list(tuple(arrays))


# Eigen's rational approximation of tanh on [-c, c] (``generic_fast_tanh_float``): at most ~4 float32 ulp from the
# exact tanh (torch's is within 1), and unlike libm's ``tanhf`` it vectorises (0.4 ns instead of 15 ns per value)
_TANH_CLAMP = np.float32(7.99881172180175781)
_TANH_TINY = np.float32(0.0004)
_ALPHA = [np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08)]
_ALPHA += [np.float32(c) for c in (1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)]
_BETA = [np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)]
A13, A11, A9, A7, A5, A3, A1 = _ALPHA
B6, B4, B2, B0 = _BETA


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _tanh_inplace(x):  # type: ignore[no-untyped-def]
    """``x = tanh(x)`` on a 1-d float32 array (NaN stays NaN; ±inf gives ±0.9999998)."""
    for i in range(x.shape[0]):
        a = x[i]
        v = _TANH_CLAMP if a > _TANH_CLAMP else a
        v = -_TANH_CLAMP if v < -_TANH_CLAMP else v
        x2 = v * v
        p = x2 * A13 + A11
        p = x2 * p + A9
        p = x2 * p + A7
        p = x2 * p + A5
        p = x2 * p + A3
        p = x2 * p + A1
        p = v * p
        q = x2 * B6 + B4
        q = x2 * q + B2
        q = x2 * q + B0
        x[i] = a if abs(a) < _TANH_TINY else p / q


@njit(cache=True, error_model="numpy")
def tanh(x):  # type: ignore[no-untyped-def]
    """:return: ``tanh`` of a float32 array as the kernels compute it (for tests)"""
    y = x.copy().reshape(-1)
    _tanh_inplace(y)
    return y.reshape(x.shape)


@njit(cache=True, error_model="numpy")
def _mlp_forward(arrays, first, count, activations, x):  # type: ignore[no-untyped-def]
    """
    :param arrays: the typed list; the branch's Linear layers are ``arrays[2 * (first + l)]`` (W) and ``+ 1`` (b)
    :param first: index of the branch's first Linear layer
    :param count: its number of Linear layers
    :param activations: activation code after each of them
    :param x: input [n, in] (float32, C order)
    :return: the input and the output of every layer (after its activation), for the backward pass
    """
    outputs = [x]
    h = x
    for layer in range(count):
        weight = arrays[2 * (first + layer)]
        bias = arrays[2 * (first + layer) + 1]
        z = np.dot(h, weight.T)
        activation = activations[layer]
        n, m = z.shape
        for i in range(n):
            for j in range(m):
                z[i, j] += bias[0, j]
        flat = z.reshape(-1)
        if activation == TANH:
            _tanh_inplace(flat)
        elif activation == RELU:
            for i in range(flat.shape[0]):
                if flat[i] < 0:  # keeps NaN, as torch's relu
                    flat[i] = np.float32(0.0)
        outputs.append(z)
        h = z
    return outputs


@njit(cache=True, error_model="numpy")
def _mlp_backward(arrays, grads, first, count, activations, outputs, grad):  # type: ignore[no-untyped-def]
    """
    Reverse pass through a branch: the gradients of its weights and biases written into ``grads``.

    :param grad: gradient of the loss with respect to the branch's output [n, out] (overwritten)
    """
    for layer in range(count - 1, -1, -1):
        activation = activations[layer]
        out = outputs[layer + 1]
        n, m = grad.shape
        flat_grad, flat_out = grad.reshape(-1), out.reshape(-1)
        if activation == TANH:
            for i in range(flat_grad.shape[0]):
                y = flat_out[i]
                flat_grad[i] = flat_grad[i] * (np.float32(1.0) - y * y)
        elif activation == RELU:
            for i in range(flat_grad.shape[0]):
                if not flat_out[i] > 0:
                    flat_grad[i] = np.float32(0.0)
        index = 2 * (first + layer)
        np.dot(grad.T, outputs[layer], grads[index])
        # The bias's gradient: the column sums, accumulated in float64 row by row (so that it vectorises)
        totals = np.zeros(m, np.float64)
        for i in range(n):
            for j in range(m):
                totals[j] += grad[i, j]
        grad_bias = grads[index + 1]
        for j in range(m):
            grad_bias[0, j] = totals[j]
        if layer > 0:
            grad = np.dot(grad, arrays[index])


@njit(cache=True, error_model="numpy")
def _normalised_logits(out):  # type: ignore[no-untyped-def]
    """``torch.distributions.Categorical(logits=out)``: logits minus their logsumexp, and the probabilities."""
    n, k = out.shape
    logits = np.empty_like(out)
    probs = np.empty_like(out)
    for i in range(n):
        largest = out[i, 0]
        for j in range(1, k):
            if out[i, j] > largest:
                largest = out[i, j]
        total = np.float32(0.0)
        for j in range(k):
            total += np.exp(out[i, j] - largest)
        lse = largest + np.log(total)
        for j in range(k):
            logits[i, j] = out[i, j] - lse
        # softmax of the normalised logits, as F.softmax: exp(l - max l) / sum
        largest = logits[i, 0]
        for j in range(1, k):
            if logits[i, j] > largest:
                largest = logits[i, j]
        total = np.float32(0.0)
        for j in range(k):
            probs[i, j] = np.exp(logits[i, j] - largest)
            total += probs[i, j]
        for j in range(k):
            probs[i, j] = probs[i, j] / total
    return logits, probs


@njit(cache=True, error_model="numpy")
def collect_forward(arrays, layout, obs, mode, noise, actions, values, log_probs):  # type: ignore[no-untyped-def]
    """
    The policy's forward pass for a collection step (``ActorCriticPolicy.forward``), on the caller's random draws.

    :param obs: observations [n, obs_dim] (float32)
    :param mode: ``GAUSSIAN_SAMPLE``: ``actions = mean + noise * std`` and their log-likelihood (``Normal.rsample``);
        ``CATEGORICAL_SAMPLE``: the index ``argmax_j p_j / noise_j`` written as ``actions[i, 0]`` and its
        log-likelihood, which is how ``torch.multinomial(p, 1, True)`` draws one sample from exponential draws
        ``noise``; ``VALUES_ONLY``: the values
    :param noise: the draws [n, n_out]: standard normal (Gaussian) or exponential (Categorical)
    :param actions: out, [n, n_out]
    :param values: out, [n]
    :param log_probs: out, [n]
    :return: 0, or 1 if a row of probabilities is not a distribution (NaN or infinite)
    """
    n_pi, n_vf = layout[L_N_PI], layout[L_N_VF]
    acts_pi = layout[L_ACTIVATIONS : L_ACTIVATIONS + n_pi]
    acts_vf = layout[L_ACTIVATIONS + n_pi : L_ACTIVATIONS + n_pi + n_vf]
    critic = _mlp_forward(arrays, n_pi, n_vf, acts_vf, obs)[-1]
    n = obs.shape[0]
    for i in range(n):
        values[i] = critic[i, 0]
    if mode == VALUES_ONLY:
        return 0
    out = _mlp_forward(arrays, 0, n_pi, acts_pi, obs)[-1]
    k = out.shape[1]
    if mode == CATEGORICAL_SAMPLE:
        logits, probs = _normalised_logits(out)
        for i in range(n):
            best, best_score = 0, np.float32(-1.0)
            for j in range(k):
                if not np.isfinite(probs[i, j]):
                    return 1
                # float32 division and the first maximum, as torch's div and argmax
                score = probs[i, j] / noise[i, j]
                if score > best_score:
                    best, best_score = j, score
            actions[i, 0] = best
            log_probs[i] = logits[i, best]
        return 0
    log_std = arrays[2 * (n_pi + n_vf)]
    for i in range(n):
        total = np.float32(0.0)
        for j in range(k):
            std = np.exp(log_std[0, j])
            # Normal.rsample: loc + eps * scale; Normal.log_prob: -(a - μ)² / (2σ²) - log σ - log √(2π)
            action = out[i, j] + noise[i, j] * std
            actions[i, j] = action
            diff = action - out[i, j]
            total += -(diff * diff) / (np.float32(2.0) * (std * std)) - np.log(std) - _LOG_SQRT_2PI
        log_probs[i] = total
    return 0


@njit(cache=True, error_model="numpy")
def _head(out, arrays, log_std_index, categorical, actions):  # type: ignore[no-untyped-def]
    """
    :return: log-likelihood of the actions [n], entropy [n], and the distribution's parameters (normalised logits and
        probabilities [n, k], or the mean [n, k] and the state-independent std [1, k])
    """
    n, k = out.shape
    log_prob = np.empty(n, np.float32)
    entropy = np.empty(n, np.float32)
    if categorical:
        logits, probs = _normalised_logits(out)
        for i in range(n):
            log_prob[i] = logits[i, int(actions[i, 0])]
            total = np.float32(0.0)
            for j in range(k):
                # SB3's entropy clamps -inf logits (of probability 0) to the most negative float
                total += max(logits[i, j], _FLOAT32_MIN) * probs[i, j]
            entropy[i] = -total
        return log_prob, entropy, logits, probs
    log_std = arrays[log_std_index]
    std = np.empty((1, k), np.float32)
    entropy_value = np.float32(0.0)
    for j in range(k):
        std[0, j] = np.exp(log_std[0, j])
        entropy_value += _ENTROPY_CONST + np.log(std[0, j])
    for i in range(n):
        total = np.float32(0.0)
        for j in range(k):
            diff = actions[i, j] - out[i, j]
            total += -(diff * diff) / (np.float32(2.0) * (std[0, j] * std[0, j])) - np.log(std[0, j]) - _LOG_SQRT_2PI
        log_prob[i] = total
        entropy[i] = entropy_value
    return log_prob, entropy, out, std


@njit(cache=True, error_model="numpy")
def log_prob_backward(categorical, actions, param_a, param_b, grad_log_prob, grad_out, grad_log_std):  # type: ignore[no-untyped-def]
    """
    The derivative of ``Σ_i grad_log_prob[i] · log π(a_i|s_i)`` with respect to the actor's output, added to
    ``grad_out`` [n, k], and (Gaussian) with respect to ``log_std``, added to ``grad_log_std`` [1, k].

    :param param_a: the normalised logits, or the mean (see ``_head``)
    :param param_b: the probabilities, or the std [1, k]
    """
    n, k = grad_out.shape
    if categorical:
        probs = param_b
        for i in range(n):
            for j in range(k):
                grad_out[i, j] += -grad_log_prob[i] * probs[i, j]
            grad_out[i, int(actions[i, 0])] += grad_log_prob[i]
        return
    mean, std = param_a, param_b
    for j in range(k):
        variance = std[0, j] * std[0, j]
        accumulated = np.float32(0.0)
        for i in range(n):
            diff = actions[i, j] - mean[i, j]
            grad_out[i, j] += grad_log_prob[i] * (diff / variance)
            accumulated += grad_log_prob[i] * (diff * diff / variance - np.float32(1.0))
        grad_log_std[0, j] += accumulated


@njit(cache=True, error_model="numpy")
def _normalize(advantages, normalize):  # type: ignore[no-untyped-def]
    """``(A - mean) / (std + 1e-8)`` with the unbiased std, as SB3; one sample (or ``normalize`` false) unchanged."""
    n = advantages.shape[0]
    result = advantages.copy()
    if not normalize or n < 2:
        return result
    mean = 0.0
    for i in range(n):
        mean += advantages[i]
    mean /= n
    mean32 = np.float32(mean)
    variance = 0.0
    for i in range(n):
        d = advantages[i] - mean
        variance += d * d
    denominator = np.float32(np.float32(math.sqrt(variance / (n - 1))) + np.float32(1e-8))
    for i in range(n):
        result[i] = (advantages[i] - mean32) / denominator
    return result


@njit(cache=True, error_model="numpy")
def _policy_terms(loss, clip, advantages, ratio, grad_ratio):  # type: ignore[no-untyped-def]
    """
    The surrogate ``clip`` (PPO-clip) or ``-mean(r·A)`` (``unclipped`` and ``kl_penalty``), and its derivative with
    respect to each ratio (written into ``grad_ratio``), following autograd's rules: ``clamp`` passes the gradient at its
    bounds, ``min`` of equal terms splits it in halves.

    :return: the surrogate loss
    """
    n = ratio.shape[0]
    scale = np.float32(-1.0 / n)  # the backward pass of -mean
    total = 0.0
    if loss != 0:
        for i in range(n):
            total += advantages[i] * ratio[i]
            grad_ratio[i] = scale * advantages[i]
        return -total / n
    low, high = np.float32(1.0 - clip), np.float32(1.0 + clip)
    for i in range(n):
        r = ratio[i]
        unclipped = advantages[i] * r
        clipped = advantages[i] * min(max(r, low), high)
        inside = np.float32(1.0) if low <= r <= high else np.float32(0.0)
        if unclipped < clipped:
            total += unclipped
            weight = np.float32(1.0)
        elif unclipped > clipped:
            total += clipped
            weight = inside
        else:
            total += clipped
            weight = np.float32(0.5) + np.float32(0.5) * inside
        grad_ratio[i] = scale * advantages[i] * weight
    return -total / n


@njit(cache=True, error_model="numpy")
def _value_terms(values, old_values, returns, clip_vf, vf_max, vf_coef, grad_values):  # type: ignore[no-untyped-def]
    """
    The value loss (``clip_vf`` NaN: no clipping; ``vf_max``: ``mean(max((R - V)², (R - V_clip)²))``, else SB3's
    ``mean((R - V_clip)²)``) and ``vf_coef`` times its derivative (written into ``grad_values`` [n, 1]).

    :return: the loss and the number of clipped predictions
    """
    n = values.shape[0]
    scale = np.float32(2.0 / n)
    coef = np.float32(vf_coef)
    total = 0.0
    n_clipped = 0
    if math.isnan(clip_vf):
        for i in range(n):
            error = returns[i] - values[i]
            total += error * error
            grad_values[i, 0] = coef * (scale * (values[i] - returns[i]))
        return total / n, n_clipped
    low, high = np.float32(-clip_vf), np.float32(clip_vf)
    for i in range(n):
        change = values[i] - old_values[i]
        if abs(change) > high:
            n_clipped += 1
        inside = np.float32(1.0) if low <= change <= high else np.float32(0.0)
        clipped = old_values[i] + min(max(change, low), high)
        clipped_error = returns[i] - clipped
        clipped_square = clipped_error * clipped_error
        grad_clipped = scale * (clipped - returns[i]) * inside
        if not vf_max:
            total += clipped_square
            grad_values[i, 0] = coef * grad_clipped
            continue
        error = returns[i] - values[i]
        square = error * error
        grad_unclipped = scale * (values[i] - returns[i])
        if square > clipped_square:
            total += square
            grad = grad_unclipped
        elif square < clipped_square:
            total += clipped_square
            grad = grad_clipped
        else:
            total += square
            grad = np.float32(0.5) * grad_unclipped + np.float32(0.5) * grad_clipped
        grad_values[i, 0] = coef * grad
    return total / n, n_clipped


@njit(cache=True, error_model="numpy")
def _adam(arrays, grads, n_params, hyper, coef):  # type: ignore[no-untyped-def]
    """
    ``clip_coef`` applied to the gradients, then torch's single-tensor Adam step on every parameter (its own
    param group's hyper-parameters; its own ``step``).
    """
    for index in range(n_params):
        step = arrays[3 * n_params + index]
        lr, beta1, beta2 = hyper[index, H_LR], hyper[index, H_BETA1], hyper[index, H_BETA2]
        eps, weight_decay, decoupled = hyper[index, H_EPS], hyper[index, H_WEIGHT_DECAY], hyper[index, H_DECOUPLED]
        step[0, 0] += np.float32(1.0)
        count = float(step[0, 0])
        bias_correction1 = 1.0 - beta1**count
        bias_correction2 = 1.0 - beta2**count
        # Weight decay: coupled, grad + wd * param; decoupled, param * (1 - lr * wd) first (both no-ops at wd = 0)
        coupled_decay = np.float32(0.0 if decoupled else weight_decay)
        shrink = np.float32(1.0 - lr * weight_decay) if decoupled else np.float32(1.0)
        _adam_tensor(
            arrays[index].reshape(-1),
            grads[index].reshape(-1),
            arrays[n_params + index].reshape(-1),
            arrays[2 * n_params + index].reshape(-1),
            coef,
            coupled_decay,
            shrink,
            beta1,
            np.float32(beta2),
            np.float32(1.0 - beta2),
            np.float32(-(lr / bias_correction1)),
            np.float32(math.sqrt(bias_correction2)),
            np.float32(eps),
        )


@njit(cache=True, error_model="numpy")
def _adam_tensor(  # type: ignore[no-untyped-def]
    param, grad, exp_avg, exp_avg_sq, coef, coupled_decay, shrink, beta1, beta2, weight2, step_size, bias_sqrt, eps
):
    """Adam on one tensor (flat views), branch-free in the loop so that it vectorises."""
    # lerp_(grad, w) computes self + w * (end - self) for w < 0.5, else end - (end - self) * (1 - w)
    weight1 = np.float32(1.0 - beta1)
    complement1 = np.float32(1.0) - weight1
    if (1.0 - beta1) < 0.5:
        for i in range(param.shape[0]):
            p = param[i] * shrink
            g = grad[i] * coef + coupled_decay * p
            m = exp_avg[i] + weight1 * (g - exp_avg[i])
            v = exp_avg_sq[i] * beta2 + weight2 * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p + step_size * (m / (np.sqrt(v) / bias_sqrt + eps))
    else:
        for i in range(param.shape[0]):
            p = param[i] * shrink
            g = grad[i] * coef + coupled_decay * p
            m = g - (g - exp_avg[i]) * complement1
            v = exp_avg_sq[i] * beta2 + weight2 * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p + step_size * (m / (np.sqrt(v) / bias_sqrt + eps))


@njit(cache=True, error_model="numpy")
def grad_views(grad_buffer, arrays, n_params):  # type: ignore[no-untyped-def]
    """:return: views of the gradient workspace, one per parameter ``arrays[:n_params]``, shaped as it, in order"""
    grads = []
    offset = 0
    for index in range(n_params):
        rows, cols = arrays[index].shape
        grads.append(grad_buffer[offset : offset + rows * cols].reshape(rows, cols))
        offset += rows * cols
    return grads


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _norm(x):  # type: ignore[no-untyped-def]
    """:return: the L2 norm of a float32 vector, accumulated in float64 (reassociated: it vectorises)"""
    squares = 0.0
    for i in range(x.shape[0]):
        value = float(x[i])
        squares += value * value
    return math.sqrt(squares)


@njit(cache=True, error_model="numpy")
def _gaussian_kl(out, std, old_out, old_log_std, grad_out, grad_log_std, coef):  # type: ignore[no-untyped-def]
    """
    KL(π_old ‖ π) of diagonal Gaussians summed over dimensions, its mean over the samples, and ``coef`` times the
    derivative of that mean added to ``grad_out`` (on the means) and ``grad_log_std``.
    """
    n, k = out.shape
    total = 0.0
    scale = np.float32(coef / n)
    for j in range(k):
        old_std = np.exp(old_log_std[0, j])
        s = std[0, j]
        variance = s * s
        old_variance = old_std * old_std
        var_ratio = (old_std / s) * (old_std / s)
        log_var_ratio = np.log(var_ratio)
        accumulated = np.float32(0.0)
        for i in range(n):
            diff = out[i, j] - old_out[i, j]
            t1 = (diff / s) * (diff / s)
            total += np.float32(0.5) * (var_ratio + t1 - np.float32(1.0) - log_var_ratio)
            grad_out[i, j] += scale * diff / variance
            accumulated += np.float32(1.0) - (old_variance + diff * diff) / variance
        grad_log_std[0, j] += scale * accumulated
    return total / n


@njit(cache=True, error_model="numpy")
def _categorical_kl(logits, probs, old_logits, old_probs, grad_out, coef):  # type: ignore[no-untyped-def]
    """KL(π_old ‖ π) = Σ p_old (l_old - l), its mean, and ``coef`` times the derivative of the mean (``p - p_old``)
    added to ``grad_out``."""
    n, k = logits.shape
    total = 0.0
    scale = np.float32(coef / n)
    for i in range(n):
        for j in range(k):
            if old_probs[i, j] != 0:
                total += old_probs[i, j] * (old_logits[i, j] - logits[i, j])
            grad_out[i, j] += scale * (probs[i, j] - old_probs[i, j])
    return total / n


@njit(cache=True, error_model="numpy")
def ppo_minibatch(  # type: ignore[no-untyped-def]  # noqa: C901
    arrays,
    old_arrays,
    layout,
    obs,
    actions,
    old_values,
    old_log_prob,
    advantages,
    returns,
    settings,
    hyper,
    grad_buffer,
    stats,
):
    """
    One TrustPPO minibatch step, in place on the parameters and Adam's state in ``arrays``.

    :param old_arrays: π_old's actor (its Linear layers, then ``log_std``), for ``kl_penalty``
    :param obs: [n, obs_dim] float32; ``actions`` [n, n_out] (Discrete: [n, 1], the index as a float)
    :param old_values: [n]; ``old_log_prob``, ``advantages``, ``returns`` likewise (float32)
    :param settings: see ``S_*`` (NaN for a missing ``clip_range_vf`` or ``max_approx_kl``)
    :param hyper: [n_params, N_HYPER] Adam's hyper-parameters of each parameter
    :param grad_buffer: float32 workspace for the gradient, as long as all the parameters together
    :param stats: out, see ``STATS``
    :return: ``APPLIED``, ``EARLY_STOP`` or a key of ``NON_FINITE`` (nothing changed unless ``APPLIED``)
    """
    n_pi, n_vf, categorical = layout[L_N_PI], layout[L_N_VF], layout[L_CATEGORICAL] != 0
    acts_pi = layout[L_ACTIVATIONS : L_ACTIVATIONS + n_pi]
    acts_vf = layout[L_ACTIVATIONS + n_pi : L_ACTIVATIONS + n_pi + n_vf]
    n_params = 2 * (n_pi + n_vf) + (0 if categorical else 1)
    log_std_index = 2 * (n_pi + n_vf)
    n = obs.shape[0]
    loss_kind = int(settings[S_LOSS])
    ent_coef, vf_coef = settings[S_ENT_COEF], settings[S_VF_COEF]

    actor = _mlp_forward(arrays, 0, n_pi, acts_pi, obs)
    critic = _mlp_forward(arrays, n_pi, n_vf, acts_vf, obs)
    out = actor[-1]
    k = out.shape[1]
    log_prob, entropy, param_a, param_b = _head(out, arrays, log_std_index, categorical, actions)
    adv = _normalize(advantages, settings[S_NORMALIZE] != 0)

    ratio = np.empty(n, np.float32)
    log_ratio = np.empty(n, np.float32)
    approx_kl = 0.0
    ratio_sum = 0.0
    ratio_max = -np.inf
    n_clipped = 0
    stats_clip = settings[S_STATS_CLIP]
    for i in range(n):
        log_ratio[i] = log_prob[i] - old_log_prob[i]
        ratio[i] = np.exp(log_ratio[i])
        approx_kl += (ratio[i] - np.float32(1.0)) - log_ratio[i]
        ratio_sum += ratio[i]
        if ratio[i] > ratio_max or math.isnan(ratio[i]):
            ratio_max = ratio[i]
        if abs(ratio[i] - np.float32(1.0)) > stats_clip:
            n_clipped += 1
    grad_ratio = np.empty(n, np.float32)
    policy_loss = _policy_terms(loss_kind, settings[S_CLIP], adv, ratio, grad_ratio)

    # The head's gradient: the surrogate through log π(a|s), then the entropy and KL terms
    grad_out = np.zeros((n, k), np.float32)
    grad_log_std = np.zeros((1, k), np.float32)
    grad_log_prob = grad_ratio * ratio  # exp's backward: grad * result
    # The entropy term first: the surrogate's is then added in the order of the sums the reference path computes
    if categorical and ent_coef != 0:
        logits, probs = param_a, param_b
        entropy_scale = np.float32(ent_coef / n)
        for i in range(n):
            for j in range(k):
                grad_out[i, j] = entropy_scale * probs[i, j] * (max(logits[i, j], _FLOAT32_MIN) + entropy[i])
    elif not categorical:
        for j in range(k):
            grad_log_std[0, j] = -np.float32(ent_coef)
    log_prob_backward(categorical, actions, param_a, param_b, grad_log_prob, grad_out, grad_log_std)
    if loss_kind == 2:
        old_out = _mlp_forward(old_arrays, 0, n_pi, acts_pi, obs)[-1]
        if categorical:
            old_logits, old_probs = _normalised_logits(old_out)
            kl = _categorical_kl(param_a, param_b, old_logits, old_probs, grad_out, settings[S_KL_COEF])
        else:
            kl = _gaussian_kl(out, param_b, old_out, old_arrays[2 * n_pi], grad_out, grad_log_std, settings[S_KL_COEF])
        policy_loss += settings[S_KL_COEF] * kl

    grad_values = np.empty((n, 1), np.float32)
    values = critic[-1][:, 0]
    value_loss, n_value_clipped = _value_terms(
        values, old_values, returns, settings[S_CLIP_VF], settings[S_VF_MAX] != 0, vf_coef, grad_values
    )
    entropy_loss = 0.0
    for i in range(n):
        entropy_loss -= entropy[i]
    entropy_loss /= n
    approx_kl /= n

    stats[0] = policy_loss
    stats[1] = value_loss
    stats[2] = entropy_loss
    stats[3] = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss
    stats[4] = approx_kl
    stats[5] = n_clipped / n
    stats[6] = n_value_clipped / n
    stats[7] = ratio_max
    stats[8] = ratio_sum / n
    stats[9] = np.nan
    if not math.isnan(settings[S_MAX_KL]) and approx_kl > settings[S_MAX_KL]:
        return EARLY_STOP
    if not math.isfinite(policy_loss):
        return 2
    if not math.isfinite(value_loss):
        return 3
    if not math.isfinite(entropy_loss):
        return 4

    grads = grad_views(grad_buffer, arrays, n_params)
    _mlp_backward(arrays, grads, 0, n_pi, acts_pi, actor, grad_out)
    _mlp_backward(arrays, grads, n_pi, n_vf, acts_vf, critic, grad_values)
    if not categorical:
        grads[log_std_index][0, :] = grad_log_std[0, :]

    norm = _norm(grad_buffer)
    stats[9] = norm
    if not math.isfinite(norm):
        return 5
    # clip_grad_norm_: max_norm / (total_norm + 1e-6) (torch: reciprocal, then times max_norm), clamped to 1
    coef = (np.float32(1.0) / (np.float32(norm) + np.float32(1e-6))) * np.float32(settings[S_MAX_GRAD_NORM])
    coef = min(coef, np.float32(1.0))
    _adam(arrays, grads, n_params, hyper, coef)
    return APPLIED

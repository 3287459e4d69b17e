/*
 * The rollout-collection forward pass of a lean-path actor-critic in one call (see sb3_trust/common/fused_policy.py,
 * NumpyFusedActorCritic, which loads this file through sb3_trust/common/kernels.py).
 *
 * For the few observations of a collection step, the NumPy evaluation of the network costs about twenty NumPy calls
 * of a microsecond each around a few microseconds of arithmetic; here the whole pass is one call. Same formulas as
 * NumpyFusedActorCritic.forward_numpy, in float32; the products are summed over the inputs in order, without fused
 * multiply-add (-ffp-contract=off), so results agree with NumPy's BLAS to the last bits, not bit for bit.
 *
 * The network is described by a plan, an int64 array built once per refresh (NumpyFusedActorCritic._build_plan):
 *   plan[P_N_PI], plan[P_N_VF]: number of Linear layers of the actor (hidden layers and action_net) and the critic;
 *   plan[P_K]: output width of the actor (action dimension, or number of actions of a Categorical);
 *   plan[P_SCRATCH]: a float32 buffer of 2 * (widest layer) floats;
 *   plan[P_STD], plan[P_NHIV], plan[P_LOG_NORM]: the Gaussian's std [k], -1 / (2 std^2) [k] and
 *     sum(log std + log sqrt(2 pi)) [1] (unused for a Categorical);
 *   then per Linear layer, actor's first: weight transposed [in, out], bias [out], in, out, activation after it.
 */
#include <math.h>
#include <stdint.h>

typedef int64_t i64;

enum { ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };
enum { P_N_PI, P_N_VF, P_K, P_SCRATCH, P_STD, P_NHIV, P_LOG_NORM, P_LAYERS };
enum { L_WEIGHT, L_BIAS, L_IN, L_OUT, L_ACT, L_SIZE };

/* y = activation(x @ wt + b) for one row: x [in], wt [in, out] (row-major), b [out], y [out] */
static void linear_row(const float *restrict x, const float *restrict wt, const float *restrict b, i64 in, i64 out,
                       int activation, float *restrict y)
{
    for (i64 j = 0; j < out; j++)
        y[j] = 0.0f;
    /* Four inputs per pass over y (the same order of additions as one at a time, a quarter of the loads and stores) */
    i64 i = 0;
    for (; i + 4 <= in; i += 4) {
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
        const float *restrict w0 = wt + i * out, *restrict w1 = w0 + out, *restrict w2 = w1 + out, *restrict w3 = w2 + out;
        for (i64 j = 0; j < out; j++)
            y[j] = (((y[j] + x0 * w0[j]) + x1 * w1[j]) + x2 * w2[j]) + x3 * w3[j];
    }
    for (; i < in; i++) {
        const float xi = x[i];
        const float *restrict w = wt + i * out;
        for (i64 j = 0; j < out; j++)
            y[j] += xi * w[j];
    }
    for (i64 j = 0; j < out; j++)
        y[j] += b[j];
    if (activation == ACT_TANH) {
        for (i64 j = 0; j < out; j++)
            y[j] = tanhf(y[j]);
    } else if (activation == ACT_RELU) {
        for (i64 j = 0; j < out; j++)
            y[j] = y[j] < 0.0f ? 0.0f : y[j];  /* NaN stays NaN, as np.maximum(y, 0) */
    }
}

/* One row through a chain of Linear layers (ping-pong between the two halves of scratch), the last into dst */
static void chain_row(const i64 *layers, i64 n_layers, const float *x, float *scratch, i64 half, float *dst)
{
    const float *input = x;
    for (i64 l = 0; l < n_layers; l++) {
        const i64 *layer = layers + l * L_SIZE;
        float *output = l == n_layers - 1 ? dst : scratch + (l % 2) * half;
        linear_row(input, (const float *)(intptr_t)layer[L_WEIGHT], (const float *)(intptr_t)layer[L_BIAS], layer[L_IN],
                   layer[L_OUT], (int)layer[L_ACT], output);
        input = output;
    }
}

/*
 * n rows of observations obs [n, in] -> the actor's output out [n, k] and the values [n]; for a Gaussian (actions not
 * NULL) also the actions [n, k] (out + noise * std, or out if noise is NULL: deterministic) and their log-likelihood
 * [n]: sum_j (a - out)^2 * (-1 / (2 std_j^2)) - sum_j (log std_j + log sqrt(2 pi)).
 */
void actor_critic_forward(const i64 *plan, i64 n, const float *obs, const float *noise, float *out, float *values,
                          float *actions, float *log_prob)
{
    const i64 n_pi = plan[P_N_PI], n_vf = plan[P_N_VF], k = plan[P_K];
    const i64 *pi = plan + P_LAYERS, *vf = pi + n_pi * L_SIZE;
    const i64 in = pi[L_IN];
    i64 half = 0;
    for (i64 l = 0; l < n_pi + n_vf; l++)
        if (pi[l * L_SIZE + L_OUT] > half)
            half = pi[l * L_SIZE + L_OUT];
    float *scratch = (float *)(intptr_t)plan[P_SCRATCH];
    const float *std = (const float *)(intptr_t)plan[P_STD];
    const float *nhiv = (const float *)(intptr_t)plan[P_NHIV];
    for (i64 r = 0; r < n; r++) {
        const float *x = obs + r * in;
        float *o = out + r * k;
        chain_row(pi, n_pi, x, scratch, half, o);
        chain_row(vf, n_vf, x, scratch, half, values + r);
        if (actions == 0)
            continue;
        const float log_norm = *(const float *)(intptr_t)plan[P_LOG_NORM];
        float *a = actions + r * k;
        float total = 0.0f;
        for (i64 j = 0; j < k; j++) {
            a[j] = noise ? noise[r * k + j] * std[j] + o[j] : o[j];
            const float diff = a[j] - o[j];
            total += (diff * diff) * nhiv[j];
        }
        log_prob[r] = total - log_norm;
    }
}

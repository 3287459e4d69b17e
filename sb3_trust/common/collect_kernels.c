/*
 * The rollout-collection forward pass of a lean-path actor-critic in one call (see sb3_trust/common/fused_policy.py,
 * NumpyFusedActorCritic, which loads this file through sb3_trust/common/kernels.py).
 *
 * For the few observations of a collection step, the NumPy evaluation of the network costs about twenty NumPy calls
 * of a microsecond each around a few microseconds of arithmetic; here the whole pass is one call. Same formulas as
 * NumpyFusedActorCritic.forward_numpy, in float32; each output's sum over the inputs is taken in order, without
 * fused multiply-add (-ffp-contract=off), so results agree with NumPy's BLAS to the last bits, not bit for bit.
 *
 * The network is described by a plan, an int64 array built once (NumpyFusedActorCritic._build_plan; the buffers it
 * points to are overwritten with the current parameters at every refresh):
 *   plan[P_N_PI], plan[P_N_VF]: number of Linear layers of the actor (hidden layers and action_net) and the critic;
 *   plan[P_K]: output width of the actor (action dimension, or number of actions of a Categorical);
 *   plan[P_SCRATCH]: a float32 buffer of 2 * (widest layer) floats;
 *   plan[P_STD], plan[P_NHIV], plan[P_LOG_NORM]: the Gaussian's std [k], -1 / (2 std^2) [k] and
 *     sum(log std + log sqrt(2 pi)) [1] (0 for a Categorical);
 *   then per Linear layer, actor's first: weight transposed [in, out], bias [out], in, out, activation after it.
 */
#include <math.h>
#include <stdint.h>

typedef int64_t i64;

enum { ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };
enum { P_N_PI, P_N_VF, P_K, P_SCRATCH, P_STD, P_NHIV, P_LOG_NORM, P_LAYERS };
enum { L_WEIGHT, L_BIAS, L_IN, L_OUT, L_ACT, L_SIZE };

/* If *m >= digit (a power of two): *m -= digit, and 2^digit (= power); else 1 */
static inline float binary_digit(float *m, float digit, float power)
{
    const int set = *m >= digit;
    *m -= set ? digit : 0.0f;
    return set ? power : 1.0f;
}

/*
 * tanh in float32, within 1 ulp of the correctly rounded value (tested against float64 over a grid of floats),
 * written so that the loops calling it vectorise (glibc's tanhf does not, and cost ~10 ns a call): Cephes' odd
 * polynomial below |x| = 0.625, else 1 - 2 / (exp(2|x|) + 1) with the sign of x, exp by Cephes' range reduction and
 * polynomial, 2^n built exactly from the bits of n (no integer conversions, which do not vectorise here); ±1 from
 * |x| = 9 on (tanh rounds to ±1 in float32 from |x| = 8.7), NaN stays NaN, ±0 stays ±0.
 */
static inline float tanh_f(float x)
{
    const float a = fabsf(x);
    const float z = x * x;
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                         - 3.33332819422e-1f) * z * x + x;
    const float y = 2.0f * (a > 9.0f ? 9.0f : a);
    const float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* rounded to the nearest integer, 0..26 */
    const float r = (y - n * 0.693359375f) - n * -2.12194440e-4f;             /* y - n ln 2, in two parts */
    const float p = ((((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
                       + 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r) + 1.0f;  /* exp(r) */
    float m = n, scale = 1.0f;  /* 2^n, one binary digit of n at a time (16, 8, 4, 2, 1) */
    scale *= binary_digit(&m, 16.0f, 65536.0f);
    scale *= binary_digit(&m, 8.0f, 256.0f);
    scale *= binary_digit(&m, 4.0f, 16.0f);
    scale *= binary_digit(&m, 2.0f, 4.0f);
    scale *= binary_digit(&m, 1.0f, 2.0f);
    const float large = copysignf(a < 9.0f ? 1.0f - 2.0f / (p * scale + 1.0f) : 1.0f, x);
    return (x != x || a == 0.0f) ? x : (a < 0.625f ? small : large);
}

/* x <- tanh(x), in place, for n floats (tanh_f; exported for the tests) */
void tanh_inplace(float *restrict x, i64 n)
{
    for (i64 i = 0; i < n; i++)
        x[i] = tanh_f(x[i]);
}

/* y = activation(x @ wt + b) for one row: x [in], wt [in, out] (the Linear's weight transposed, row-major), b [out] */
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
            y[j] = tanh_f(y[j]);
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
 * n rows of observations obs [n, in] -> the actor's output and the values [n], then, where the output buffers are
 * given (not NULL):
 * - a diagonal Gaussian (plan[P_STD] not 0): the actions [n, k] (out + noise * std, or out if noise is NULL:
 *   deterministic) and their log-likelihood [n]: sum_j (a - out)^2 * (-1 / (2 std_j^2)) - sum_j (log std_j + log
 *   sqrt(2 pi)); out [n, k] holds the mean;
 * - a Categorical: out [n, k] holds the log-probabilities (logits - max - log sum exp(logits - max)) and probs [n, k]
 *   the probabilities exp(logits - max) / sum exp(logits - max), as NumpyFusedActorCritic._categorical computes them
 *   (the caller samples from probs with torch's RNG).
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
        float *a = actions + r * k;
        if (std == 0) {  /* Categorical: a <- probabilities, o <- log-probabilities */
            float largest = o[0];
            for (i64 j = 1; j < k; j++)
                largest = o[j] > largest ? o[j] : largest;
            float total = 0.0f;
            for (i64 j = 0; j < k; j++) {
                o[j] = o[j] - largest;
                a[j] = expf(o[j]);
                total += a[j];
            }
            const float log_total = logf(total);
            for (i64 j = 0; j < k; j++) {
                a[j] = a[j] / total;
                o[j] = o[j] - log_total;
            }
            continue;
        }
        const float log_norm = *(const float *)(intptr_t)plan[P_LOG_NORM];
        float total = 0.0f;
        for (i64 j = 0; j < k; j++) {
            a[j] = noise ? noise[r * k + j] * std[j] + o[j] : o[j];
            const float diff = a[j] - o[j];
            total += (diff * diff) * nhiv[j];
        }
        log_prob[r] = total - log_norm;
    }
}

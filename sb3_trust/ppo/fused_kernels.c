/*
 * TrustPPO's fused minibatch kernels (see sb3_trust/ppo/fused.py, which compiles and loads this file).
 *
 * Each function does in one pass over plain float32 arrays what the closed-form path (sb3_trust/ppo/analytic.py)
 * does with dozens of small torch operations: the same formulas, in the same order of floating-point operations
 * per element, evaluated in float32 (sums are accumulated in double, so they can differ from torch's in the last
 * bits). The matrix products are torch's (th.addmm, th.mm) or NumPy's, except in ppo_epoch, which calls the same
 * BLAS functions with the same arguments.
 *
 * Compiled with -O3 -march=native -ffp-contract=off (no fused multiply-add: every product and sum is rounded as
 * torch's element-wise kernels round it), -fno-math-errno (sqrtf vectorises; results are unchanged) and without -ffast-math (NaN and inf must propagate, so that the caller's
 * non-finite check sees them).
 */
#include <math.h>
#include <stdint.h>
#include <float.h>

typedef int64_t i64;

/* grad <- grad * (1 - y * y) (tanh) or grad <- (y <= 0 ? 0 : grad) (ReLU), in place; y is the activation's output */
void activation_backward(float *grad, const float *y, i64 n, int relu)
{
    if (relu) {
        for (i64 i = 0; i < n; i++)
            grad[i] = y[i] <= 0.0f ? 0.0f : grad[i];
    } else {
        for (i64 i = 0; i < n; i++)
            grad[i] = grad[i] * (1.0f - y[i] * y[i]);
    }
}

/* out[j] = sum_i g[i, j] for g [n, m] (a Linear layer's bias gradient), accumulated in double */
void column_sums(const float *g, i64 n, i64 m, float *out)
{
    for (i64 j0 = 0; j0 < m; j0 += 64) {
        const i64 width = m - j0 < 64 ? m - j0 : 64;
        double sums[64] = {0.0};
        for (i64 i = 0; i < n; i++) {
            const float *row = g + i * m + j0;
            for (i64 j = 0; j < width; j++)
                sums[j] += (double)row[j];
        }
        for (i64 j = 0; j < width; j++)
            out[j0 + j] = (float)sums[j];
    }
}


/* Indices of the per-minibatch scalars written by ppo_head */
enum { S_POLICY_LOSS, S_VALUE_LOSS, S_ENTROPY_LOSS, S_LOSS, S_VALUE_CLIP_FRACTION, N_SCALARS };

static inline float clamp_lowest(float x) { return x < -FLT_MAX ? -FLT_MAX : x; }

/* One dimension of KL(N(m1, s1) || N(m2, s2)), as sb3_trust.common.fast_policy.kl_from_params computes it */
static inline float gaussian_kl(float m1, float s1, float m2, float s2)
{
    float r = s1 / s2, var_ratio = r * r;
    float z = (m1 - m2) / s2, t1 = z * z;
    return 0.5f * (((var_ratio + t1) - 1.0f) - logf(var_ratio));
}

/*
 * The loss of one PPO minibatch and its derivatives with respect to the actor's output, the critic's output and
 * log_std: sb3_trust.ppo.analytic.AnalyticPPO.terms, every policy_loss and the loss placement of the reference KL.
 *
 * n, k: rows and action dimensions (k = number of actions for a Categorical)
 * categorical: 1 for a Categorical (out = unnormalised logits), 0 for a diagonal Gaussian (out = mean)
 * out: [n, k] actor output; log_std: [k] (Gaussian only); values: [n] critic output
 * rows: [n, width] minibatch table; the actions start at column act_col (k columns for a Gaussian, one index for a
 *   Categorical); old_values, old_log_prob, advantages, returns are the columns val_col .. val_col + 3
 * clip_range: epsilon of PPO-clip, or < 0 for the unclipped surrogate
 * normalize_advantage: normalise the advantages over the minibatch (as SB3: unbiased std, + 1e-8; not for n < 2)
 * clip_range_vf: epsilon of value clipping, or < 0 for none; vf_max_mode: 0 = "sb3", 1 = "max"
 * old_a, old_b: pi_old's parameters on the rows, [n, k] each (normalised logits and probabilities, or mean and std),
 *   for the KL penalty kl_coef * mean(KL(pi_old || pi)) added to the policy loss; NULL for none
 * ref_a, ref_b: pi_ref's parameters, the same form, for the term ref_coef * mean(KL(pi || pi_ref)); NULL for none
 * Outputs: grad_out [n, k], grad_values [n] (already times vf_coef), grad_log_std [k] (Gaussian only),
 *   ratio [n], log_ratio [n], scalars [N_SCALARS]
 */
void ppo_head(i64 n, i64 k, int categorical, const float *out, const float *log_std, const float *values,
              const float *rows, i64 width, i64 act_col, i64 val_col, double clip_range, int normalize_advantage,
              double clip_range_vf, int vf_max_mode, double ent_coef, double vf_coef, const float *old_a,
              const float *old_b, double kl_coef, const float *ref_a, const float *ref_b, double ref_coef,
              float *grad_out, float *grad_values, float *grad_log_std, float *ratio, float *log_ratio, float *scalars)
{
    const float *col_old_values = rows + val_col, *col_old_log_prob = rows + val_col + 1;
    const float *col_advantages = rows + val_col + 2, *col_returns = rows + val_col + 3;
    const float grad_scale = (float)(-1.0 / (double)n);
    const float h = (float)(-ent_coef / (double)n);  /* d loss / d entropy of one sample */
    const float grad_kl = (float)(kl_coef / (double)n), grad_ref = (float)(ref_coef / (double)n);
    const float eps_v = (float)clip_range_vf;
    const float lo = (float)(1.0 - clip_range), hi = (float)(1.0 + clip_range);

    /* Advantage normalisation statistics */
    float adv_mean = 0.0f, adv_denominator = 1.0f;
    int normalize = normalize_advantage && n >= 2;
    if (normalize) {
        double sum = 0.0;
        for (i64 i = 0; i < n; i++)
            sum += col_advantages[i * width];
        adv_mean = (float)(sum / (double)n);
        double squares = 0.0;
        for (i64 i = 0; i < n; i++) {
            double d = (double)col_advantages[i * width] - (double)adv_mean;
            squares += d * d;
        }
        adv_denominator = (float)sqrt(squares / (double)(n - 1)) + 1e-8f;
    }

    /* Gaussian: sigma, log sigma (as torch: log(exp(log_std))) and 1 / sigma^2, per dimension */
    float sigma[64], log_sigma[64], inverse_variance[64], two_variance[64];
    double grad_log_std_acc[64], kl_log_std_acc[64], ref_log_std_acc[64];
    const float log_sqrt_2pi = (float)0.91893853320467274178, entropy_const = (float)1.41893853320467274178;
    if (!categorical) {
        for (i64 j = 0; j < k; j++) {
            sigma[j] = expf(log_std[j]);
            log_sigma[j] = logf(sigma[j]);
            inverse_variance[j] = 1.0f / (sigma[j] * sigma[j]);
            two_variance[j] = 2.0f * (sigma[j] * sigma[j]);
            grad_log_std_acc[j] = kl_log_std_acc[j] = ref_log_std_acc[j] = 0.0;
        }
    }

    double policy_sum = 0.0, entropy_sum = 0.0, value_sum = 0.0, value_clipped = 0.0, kl_sum = 0.0, ref_sum = 0.0;
    const float value_scale = (float)(2.0 / (double)n), vf_coef_f = (float)vf_coef;
    for (i64 i = 0; i < n; i++) {
        const float *o = out + i * k;
        float *g = grad_out + i * k;
        float log_prob = 0.0f, entropy = 0.0f, lse = 0.0f;
        if (categorical) {
            /* logits = out - logsumexp(out); probs = softmax(logits), kept in g until the gradient overwrites it */
            float m = o[0];
            for (i64 j = 1; j < k; j++)
                if (o[j] > m) m = o[j];
            if (isinf(m)) m = 0.0f;
            float s = 0.0f;
            for (i64 j = 0; j < k; j++)
                s += expf(o[j] - m);
            lse = logf(s) + m;
            float m2 = o[0] - lse;
            for (i64 j = 1; j < k; j++)
                if (o[j] - lse > m2) m2 = o[j] - lse;
            float s2 = 0.0f;
            for (i64 j = 0; j < k; j++) {
                g[j] = expf((o[j] - lse) - m2);
                s2 += g[j];
            }
            for (i64 j = 0; j < k; j++) {
                g[j] = g[j] / s2;
                entropy += clamp_lowest(o[j] - lse) * g[j];
            }
            entropy = -entropy;
            log_prob = o[(i64)rows[i * width + act_col]] - lse;
        } else {
            const float *a = rows + i * width + act_col;
            for (i64 j = 0; j < k; j++) {
                float d = a[j] - o[j];
                log_prob += ((-(d * d)) / two_variance[j] - log_sigma[j]) - log_sqrt_2pi;
                entropy += entropy_const + log_sigma[j];
            }
        }
        float advantage = col_advantages[i * width];
        if (normalize) advantage = (advantage - adv_mean) / adv_denominator;
        float lr = log_prob - col_old_log_prob[i * width];
        float r = expf(lr);
        log_ratio[i] = lr;
        ratio[i] = r;

        /* Surrogate and its derivative with respect to the ratio */
        float grad_ratio = advantage * grad_scale;
        if (clip_range < 0.0) {
            policy_sum += advantage * r;
        } else {
            float unclipped = advantage * r;
            float clipped = advantage * (r < lo ? lo : (r > hi ? hi : r));
            policy_sum += unclipped < clipped ? unclipped : clipped;
            if (!(unclipped < clipped || (r >= lo && r <= hi))) grad_ratio = 0.0f;
        }
        float w = grad_ratio * r;  /* d loss / d log-likelihood */
        entropy_sum += entropy;

        if (categorical) {
            i64 action = (i64)rows[i * width + act_col];
            const float *old_logits = old_a ? old_a + i * k : 0, *old_probs = old_b ? old_b + i * k : 0;
            const float *ref_logits = ref_a ? ref_a + i * k : 0;
            float kl_old = 0.0f, kl_ref = 0.0f;
            for (i64 j = 0; j < k; j++) {
                float logit = o[j] - lse;
                if (old_a) {
                    float term = old_probs[j] * (old_logits[j] - logit);
                    kl_old += old_probs[j] == 0.0f ? 0.0f : term;
                }
                if (ref_a) {
                    float difference = g[j] == 0.0f ? 0.0f : logit - ref_logits[j];
                    kl_ref += g[j] * difference;
                }
            }
            kl_sum += kl_old;
            ref_sum += kl_ref;
            for (i64 j = 0; j < k; j++) {
                float p = g[j], logit = o[j] - lse;
                float gj = (-w) * p;
                if (j == action) gj = gj + w;
                if (h != 0.0f) gj = gj - (h * p) * (clamp_lowest(logit) + entropy);
                if (old_a) gj = gj + grad_kl * (p - old_probs[j]);
                if (ref_a) {
                    float difference = p == 0.0f ? 0.0f : logit - ref_logits[j];
                    gj = gj + grad_ref * (p * (difference - kl_ref));
                }
                g[j] = gj;
            }
        } else {
            const float *a = rows + i * width + act_col;
            for (i64 j = 0; j < k; j++) {
                float mu = o[j], d = a[j] - mu;
                float gj = w * d * inverse_variance[j];
                grad_log_std_acc[j] += w * (d * d * inverse_variance[j] - 1.0f);
                if (old_a) {
                    float old_mean = old_a[i * k + j], old_std = old_b[i * k + j];
                    kl_sum += gaussian_kl(old_mean, old_std, mu, sigma[j]);
                    float old_diff = mu - old_mean;
                    gj = gj + grad_kl * old_diff * inverse_variance[j];
                    kl_log_std_acc[j] += grad_kl * (1.0f - (old_std * old_std + old_diff * old_diff) * inverse_variance[j]);
                }
                if (ref_a) {
                    float ref_mean = ref_a[i * k + j], ref_std = ref_b[i * k + j];
                    ref_sum += gaussian_kl(mu, sigma[j], ref_mean, ref_std);
                    float inverse_ref_variance = 1.0f / (ref_std * ref_std);
                    gj = gj + grad_ref * ((mu - ref_mean) * inverse_ref_variance);
                    ref_log_std_acc[j] += sigma[j] * sigma[j] * inverse_ref_variance - 1.0f;
                }
                g[j] = gj;
            }
        }

        /* Value loss and its derivative with respect to the prediction */
        float v = values[i], v_old = col_old_values[i * width], ret = col_returns[i * width];
        float gv;
        if (clip_range_vf < 0.0) {
            float e = ret - v;
            value_sum += e * e;
            gv = (v - ret) * value_scale;
        } else {
            float change = v - v_old;
            float v_clipped = v_old + (change < -eps_v ? -eps_v : (change > eps_v ? eps_v : change));
            int inside = change >= -eps_v && change <= eps_v;
            float grad_clipped = inside ? (v_clipped - ret) * value_scale : 0.0f * ((v_clipped - ret) * value_scale);
            value_clipped += fabsf(change) > eps_v;
            float ce = (ret - v_clipped) * (ret - v_clipped);
            if (!vf_max_mode) {
                value_sum += ce;
                gv = grad_clipped;
            } else {
                float ue = (ret - v) * (ret - v);
                value_sum += ue > ce ? ue : ce;
                float weight = (ue > ce ? 1.0f : 0.0f) + 0.5f * (ue == ce ? 1.0f : 0.0f);
                gv = (v - ret) * value_scale * weight + grad_clipped * (1.0f - weight);
            }
        }
        grad_values[i] = gv * vf_coef_f;
    }
    if (!categorical) {
        const float entropy_term = (float)((-ent_coef / (double)n) * (double)n);
        for (i64 j = 0; j < k; j++) {
            float gj = (float)grad_log_std_acc[j];
            if (h != 0.0f) gj = gj + entropy_term;
            if (old_a) gj = gj + (float)kl_log_std_acc[j];
            if (ref_a) gj = gj + grad_ref * (float)ref_log_std_acc[j];
            grad_log_std[j] = gj;
        }
    }
    float policy_loss = (float)(-policy_sum / (double)n);
    if (old_a) policy_loss = policy_loss + (float)kl_coef * (float)(kl_sum / (double)n);
    float value_loss = (float)(value_sum / (double)n);
    float entropy_loss = (float)(-entropy_sum / (double)n);
    float loss = (policy_loss + (float)ent_coef * entropy_loss) + vf_coef_f * value_loss;
    if (ref_a) loss = loss + (float)ref_coef * (float)(ref_sum / (double)n);
    scalars[S_POLICY_LOSS] = policy_loss;
    scalars[S_VALUE_LOSS] = value_loss;
    scalars[S_ENTROPY_LOSS] = entropy_loss;
    scalars[S_LOSS] = loss;
    scalars[S_VALUE_CLIP_FRACTION] = clip_range_vf < 0.0 ? 0.0f : (float)(value_clipped / (double)n);
}

/*
 * SB3's optimizer step on the whole gradient: clip its global L2 norm to max_norm (torch.nn.utils.clip_grad_norm_:
 * coefficient min(max_norm / (norm + 1e-6), 1)), then one torch.optim.Adam step (L2 weight_decay added to the
 * gradient, no amsgrad), on n_tensors parameters whose gradients lie one after the other in grad.
 *
 * Nothing is changed, and 1 is returned, if loss + norm is not finite; the norm is written to norm_out either way.
 */
int clip_adam_step(i64 n_tensors, float **params, float **exp_avgs, float **exp_avg_sqs, float **steps, const i64 *sizes,
                   float *grad, double max_norm, float loss, double lr, double beta1, double beta2, double eps,
                   double weight_decay, int maximize, float *norm_out)
{
    double total = 0.0;
    const float *g = grad;
    for (i64 t = 0; t < n_tensors; t++) {
        double lanes[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  /* independent partial sums (vectorisable) */
        i64 i = 0;
        for (; i + 8 <= sizes[t]; i += 8)
            for (int lane = 0; lane < 8; lane++)
                lanes[lane] += (double)g[i + lane] * (double)g[i + lane];
        double squares = 0.0;
        for (; i < sizes[t]; i++)
            squares += (double)g[i] * (double)g[i];
        for (int lane = 0; lane < 8; lane++)
            squares += lanes[lane];
        double norm = (double)(float)sqrt(squares);
        total += norm * norm;
        g += sizes[t];
    }
    float norm = (float)sqrt(total);
    *norm_out = norm;
    if (!isfinite(loss + norm)) return 1;
    float coefficient = (float)max_norm / (norm + 1e-6f);
    if (coefficient > 1.0f) coefficient = 1.0f;
    const float one_minus_beta1 = (float)(1.0 - beta1), beta2_f = (float)beta2, one_minus_beta2 = (float)(1.0 - beta2);
    const float eps_f = (float)eps, weight_decay_f = (float)weight_decay;
    g = grad;
    for (i64 t = 0; t < n_tensors; t++) {
        float step = *steps[t] + 1.0f;
        *steps[t] = step;
        double bias_correction1 = 1.0 - pow(beta1, (double)step);
        double bias_correction2 = 1.0 - pow(beta2, (double)step);
        const float step_size = (float)(lr / bias_correction1);
        const float bias_correction2_sqrt = (float)sqrt(bias_correction2);
        float *p = params[t], *m = exp_avgs[t], *v = exp_avg_sqs[t];
        for (i64 i = 0; i < sizes[t]; i++) {
            float gi = g[i] * coefficient;
            if (maximize) gi = -gi;
            if (weight_decay != 0.0) gi = gi + weight_decay_f * p[i];
            m[i] = m[i] + one_minus_beta1 * (gi - m[i]);
            v[i] = beta2_f * v[i] + one_minus_beta2 * (gi * gi);
            float denominator = sqrtf(v[i]) / bias_correction2_sqrt + eps_f;
            p[i] = p[i] - step_size * (m[i] / denominator);  /* param.addcdiv_(exp_avg, denom, value=-step_size) */
        }
        g += sizes[t];
    }
    return 0;
}

/*
 * A whole epoch of TrustPPO minibatches in one call, for MLPs of Linear layers each followed by ReLU or by nothing:
 * what sb3_trust/ppo/fused.py does per minibatch in Python (gather the rows, chain_forward_into, ppo_head,
 * chain_vjp_into, clip_adam_step), with the matrix products made by the BLAS functions torch and NumPy call, given
 * as pointers, with the arguments they pass. The results are the same, bit for bit (tests/test_ppo_fused.py).
 */

/* MKL's Fortran sgemm_ (what torch's addmm and mm call) and OpenBLAS's 64-bit-integer cblas_sgemm (NumPy's matmul) */
typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *, const float *, const float *,
                         const int *, const float *, const int *, const float *, float *, const int *);
typedef void (*cblas_sgemm_fn)(int, int, int, i64, i64, i64, float, const float *, i64, const float *, i64, float, float *,
                               i64);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

/* A chain of n_layers Linear layers; layer l maps features[l] to features[l + 1] */
typedef struct {
    i64 n_layers;
    const float **weights;   /* [features[l + 1], features[l]] */
    const float **biases;    /* [features[l + 1]], or NULL */
    const i64 *features;     /* [n_layers + 1] */
    const int *relu;         /* ReLU after layer l */
    float **outputs;         /* [batch, features[l + 1]]: layer l's output (after its ReLU) */
    float **input_grads;     /* [batch, features[l]]: d loss / d layer l's input (not used for l = 0) */
    float **weight_grads;    /* [features[l + 1], features[l]] */
    float **bias_grads;      /* [features[l + 1]], or NULL */
} Chain;

/* What an epoch needs besides the permutation: set once per update (fused.py's EpochPlan mirrors it) */
typedef struct {
    sgemm_fn sgemm;
    cblas_sgemm_fn small_sgemm;
    i64 small_work;          /* backward products of hidden layers of at most this many multiply-adds: small_sgemm */
    Chain actor, critic;
    const float *table;      /* [n_samples, width]: the rollout */
    float *rows;             /* [batch, width]: the minibatch's rows */
    i64 width, act_col, val_col, k;
    int categorical;
    const float *log_std;
    float *grad_log_std;
    float *grad_out, *grad_values;
    const float *old_a, *old_b, *ref_a, *ref_b;  /* [n_samples, k] each, or NULL */
    float *old_rows_a, *old_rows_b, *ref_rows_a, *ref_rows_b;  /* [batch, k] */
    double clip_range, clip_range_vf, ent_coef, vf_coef, kl_coef, ref_coef;
    int normalize_advantage, vf_max_mode;
    /* Adam (clip_adam_step) */
    i64 n_tensors;
    float **params, **exp_avgs, **exp_avg_sqs, **steps;
    const i64 *sizes;
    float *grad;
    double max_norm, lr, beta1, beta2, eps, weight_decay;
    int maximize;
} EpochPlan;

/* out <- relu?(x @ W.T + b) for x [n, features[l]] with leading dimension ldx: th.addmm(b, x, W.t(), out=out) */
static void chain_forward(const EpochPlan *plan, const Chain *chain, const float *x, i64 ldx, int n)
{
    for (i64 l = 0; l < chain->n_layers; l++) {
        int in = (int)chain->features[l], out = (int)chain->features[l + 1], ld_in = (int)ldx;
        float *y = chain->outputs[l];
        const float *b = chain->biases[l];
        const float one = 1.0f, beta = b ? 1.0f : 0.0f;
        if (b)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < out; j++)
                    y[(i64)i * out + j] = b[j];
        plan->sgemm("T", "N", &out, &n, &in, &one, chain->weights[l], &in, x, &ld_in, &beta, y, &out);
        if (chain->relu[l])
            for (i64 i = 0; i < (i64)n * out; i++)
                y[i] = y[i] < 0.0f ? 0.0f : y[i];  /* relu_ (clamp_min: NaN propagates) */
        x = y;
        ldx = out;
    }
}

/* chain_vjp_into: grad [n, features[last]] is d loss / d the chain's output (overwritten) */
static void chain_backward(const EpochPlan *plan, const Chain *chain, const float *x, i64 ldx, float *grad, int n)
{
    const float one = 1.0f, zero = 0.0f;
    for (i64 l = chain->n_layers - 1; l >= 0; l--) {
        int in = (int)chain->features[l], out = (int)chain->features[l + 1];
        if (chain->relu[l])
            activation_backward(grad, chain->outputs[l], (i64)n * out, 1);
        if (chain->biases[l])
            column_sums(grad, n, out, chain->bias_grads[l]);
        const float *input = l == 0 ? x : chain->outputs[l - 1];
        int ld_input = l == 0 ? (int)ldx : in;
        int small = l != chain->n_layers - 1 && (i64)n * in * out <= plan->small_work;
        /* weight gradient grad.T @ input */
        if (small)
            plan->small_sgemm(CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_NO_TRANS, out, in, n, 1.0f, grad, out, input, ld_input,
                              0.0f, chain->weight_grads[l], in);
        else
            plan->sgemm("N", "T", &in, &out, &n, &one, input, &ld_input, grad, &out, &zero, chain->weight_grads[l], &in);
        if (l == 0)
            break;
        /* input gradient grad @ W */
        float *input_grad = chain->input_grads[l];
        if (small)
            plan->small_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, n, in, out, 1.0f, grad, out, chain->weights[l],
                              in, 0.0f, input_grad, in);
        else
            plan->sgemm("N", "N", &in, &n, &out, &one, chain->weights[l], &in, grad, &out, &zero, input_grad, &in);
        grad = input_grad;
    }
}

static void gather_rows(const float *source, const i64 *indices, i64 n, i64 width, float *destination)
{
    for (i64 i = 0; i < n; i++) {
        const float *row = source + indices[i] * width;
        float *target = destination + i * width;
        for (i64 j = 0; j < width; j++)
            target[j] = row[j];
    }
}

/*
 * The minibatches permutation[0:batch], permutation[batch:2 batch], ... of one epoch. Minibatch m writes its ratios
 * and log-ratios at ratio/log_ratio + m * batch and its scalars at scalars + m * N_SCALARS.
 *
 * Returns -1, or the index of the first minibatch whose loss or gradient norm is not finite: its optimizer step is
 * not taken (clip_adam_step changes nothing), nor are the later minibatches', and its gradient norm is in norm_out.
 */
i64 ppo_epoch(const EpochPlan *plan, const i64 *permutation, i64 n_samples, i64 batch, float *ratio, float *log_ratio,
              float *scalars, float *norm_out)
{
    const i64 k = plan->k;
    for (i64 start = 0, m = 0; start < n_samples; start += batch, m++) {
        const i64 n = n_samples - start < batch ? n_samples - start : batch;
        const i64 *indices = permutation + start;
        gather_rows(plan->table, indices, n, plan->width, plan->rows);
        if (plan->old_a) {
            gather_rows(plan->old_a, indices, n, k, plan->old_rows_a);
            gather_rows(plan->old_b, indices, n, k, plan->old_rows_b);
        }
        if (plan->ref_a) {
            gather_rows(plan->ref_a, indices, n, k, plan->ref_rows_a);
            gather_rows(plan->ref_b, indices, n, k, plan->ref_rows_b);
        }
        const Chain *actor = &plan->actor, *critic = &plan->critic;
        chain_forward(plan, actor, plan->rows, plan->width, (int)n);
        chain_forward(plan, critic, plan->rows, plan->width, (int)n);
        float *minibatch_scalars = scalars + m * N_SCALARS;
        ppo_head(n, k, plan->categorical, actor->outputs[actor->n_layers - 1], plan->log_std,
                 critic->outputs[critic->n_layers - 1], plan->rows, plan->width, plan->act_col, plan->val_col,
                 plan->clip_range, plan->normalize_advantage, plan->clip_range_vf, plan->vf_max_mode, plan->ent_coef,
                 plan->vf_coef, plan->old_a ? plan->old_rows_a : 0, plan->old_b ? plan->old_rows_b : 0, plan->kl_coef,
                 plan->ref_a ? plan->ref_rows_a : 0, plan->ref_b ? plan->ref_rows_b : 0, plan->ref_coef, plan->grad_out,
                 plan->grad_values, plan->grad_log_std, ratio + start, log_ratio + start, minibatch_scalars);
        chain_backward(plan, actor, plan->rows, plan->width, plan->grad_out, (int)n);
        chain_backward(plan, critic, plan->rows, plan->width, plan->grad_values, (int)n);
        if (clip_adam_step(plan->n_tensors, plan->params, plan->exp_avgs, plan->exp_avg_sqs, plan->steps, plan->sizes,
                           plan->grad, plan->max_norm, minibatch_scalars[S_LOSS], plan->lr, plan->beta1, plan->beta2,
                           plan->eps, plan->weight_decay, plan->maximize, norm_out))
            return m;
    }
    return -1;
}

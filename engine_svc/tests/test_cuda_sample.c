/* test_cuda_sample.c (label gpu): the CUDA backend's SAMPLE hook (eng_cuda_sample) against the CPU
 * sampler (eng_sampler_sample) and an independent oracle, on a fixed logits vector with ties.
 *
 * For each parameter set (greedy; temperature; top-k; top-p; top-k + top-p + min-p) the same row is
 * drawn N times on the GPU with RNG steps 0..N-1 and seed 1234:
 *  - determinism: a second GPU call gives the same ids;
 *  - support: every id lies in the kept set of the oracle (sorted by logit, ties by lower id,
 *    truncated by top-k, top-p of the top-k mass, min-p);
 *  - distribution: total variation between the GPU histogram and the oracle's probabilities is
 *    below 3x its sampling scale (0.5 * sum sqrt(p(1-p)/N));
 *  - the CPU sampler with the same (seed, step) picks the same id in >= 99% of the draws (both use
 *    eng_sampler_uniform; only rounding at CDF boundaries may differ).
 * Exit 77 without a CUDA device. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_sampler.h"

#define V 5000
#define N 16384

static int g_fail;

static void s_result(int ok, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_result(int ok, const char *what, const char *fmt, ...) {
    printf("%-4s %s: ", ok ? "ok" : "FAIL", what);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!ok)
        g_fail++;
}

static const float *g_sort_l;
static int s_cmp(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    if (g_sort_l[ia] != g_sort_l[ib])
        return g_sort_l[ia] > g_sort_l[ib] ? -1 : 1;
    return ia - ib;
}

/* the oracle: probabilities of the kept set (0 elsewhere) */
static void s_oracle(const float *logits, const eng_sampler_params_t *p, double *prob) {
    static float l[V];
    static int idx[V];
    for (int v = 0; v < V; v++) {
        l[v] = logits[v] * (1.0f / p->temperature);
        idx[v] = v;
        prob[v] = 0;
    }
    g_sort_l = l;
    qsort(idx, V, sizeof idx[0], s_cmp);
    double mx = l[idx[0]];
    int keep = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double total = 0;
    for (int i = 0; i < keep; i++)
        total += exp(l[idx[i]] - mx);
    if (p->top_p < 1.0f) {
        double c = 0;
        int i = 0;
        while (i < keep && c < p->top_p * total)
            c += exp(l[idx[i++]] - mx);
        keep = i > 0 ? i : 1;
    }
    if (p->min_p > 0) {
        int i = 1;
        while (i < keep && exp(l[idx[i]] - mx) >= p->min_p)
            i++;
        keep = i;
    }
    double mass = 0;
    for (int i = 0; i < keep; i++)
        mass += exp(l[idx[i]] - mx);
    for (int i = 0; i < keep; i++)
        prob[idx[i]] = exp(l[idx[i]] - mx) / mass;
}

static void s_case(eng_backend_t *be, eng_tensor_t *dev, const float *logits, const char *name,
                   eng_sampler_params_t p) {
    static eng_sampler_params_t params[N];
    static uint32_t steps[N];
    static int32_t a[N], b[N];
    static double prob[V], hist[V];
    static int32_t zeros[N];
    p.seed = 1234;
    p.repetition_penalty = 1.0f;
    p.max_tokens = N;
    for (uint32_t i = 0; i < N; i++) {
        params[i] = p;
        steps[i] = i;
    }
    struct eng_sample_batch sb = {.params = params, .steps = steps, .n_rows = N};
    int r1 = be->ops->sample(be, dev, &sb, a), r2 = be->ops->sample(be, dev, &sb, b);
    if (r1 < 0 || r2 < 0) {
        s_result(0, name, "sample hook failed: %d %d", r1, r2);
        return;
    }
    int same = memcmp(a, b, sizeof a) == 0;
    s_result(same, name, "same seed, same ids over %d draws", N);
    /* CPU sampler, same (seed, step) */
    eng_sampler_t *cs = NULL;
    if (eng_sampler_new(V, &cs) < 0) {
        s_result(0, name, "eng_sampler_new failed");
        return;
    }
    static float row[V];
    int agree = 0;
    for (uint32_t i = 0; i < N; i++) {
        memcpy(row, logits, sizeof row);
        eng_sampler_seq_t sq = {.prompt = zeros, .n_prompt = 0, .output = zeros, .n_output = i};
        eng_sampler_result_t res;
        if (eng_sampler_sample(cs, &p, &sq, row, &res) == 0 && res.token == a[i])
            agree++;
    }
    eng_sampler_free(cs);
    s_result(agree >= 0.99 * N, name, "GPU and CPU sampler agree on %d of %d draws", agree, N);
    if (!(p.temperature > 0)) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        int all = 1;
        for (uint32_t i = 0; i < N; i++)
            all = all && a[i] == best;
        s_result(all, name, "greedy picks the lowest-id maximum %d", best);
        return;
    }
    s_oracle(logits, &p, prob);
    memset(hist, 0, sizeof hist);
    int outside = 0;
    for (uint32_t i = 0; i < N; i++) {
        if (a[i] < 0 || a[i] >= V || prob[a[i]] == 0)
            outside++;
        else
            hist[a[i]] += 1.0 / N;
    }
    s_result(outside == 0, name, "%d draws outside the kept set", outside);
    double tv = 0, scale = 0;
    for (int v = 0; v < V; v++) {
        tv += 0.5 * fabs(hist[v] - prob[v]);
        scale += 0.5 * sqrt(prob[v] * (1 - prob[v]) / N);
    }
    s_result(tv < 3 * scale, name, "total variation %.4f (bound %.4f)", tv, 3 * scale);
}

int main(void) {
    eng_backend_t *be = NULL;
    if (eng_backend_new("cuda", 0, 0, &be) < 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    if (!be->ops->sample) {
        printf("FAIL: the cuda backend has no SAMPLE hook (OMNIPIPE_GPU_SAMPLE=0?)\n");
        eng_backend_free(be);
        return 1;
    }
    static float logits[V];
    uint64_t x = 88172645463325252ull;
    for (int v = 0; v < V; v++) { /* xorshift: Irwin-Hall approximate normal, sd ~ 2.5 */
        double s = 0;
        for (int k = 0; k < 4; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (double)(x >> 11) / 9007199254740992.0;
        }
        logits[v] = (float)((s - 2.0) * 4.3);
    }
    /* ties at the top and inside the body */
    logits[17] = logits[4000] = logits[23] = 12.0f;
    logits[100] = logits[101] = logits[102] = logits[103] = 6.5f;
    int64_t shape[2] = {N, V};
    eng_tensor_t dev;
    int r = eng_tensor_init(&dev, ENG_DTYPE_F32, 2, shape);
    if (r == 0)
        r = be->ops->alloc(be, &dev);
    for (int i = 0; r == 0 && i < N; i++)
        r = be->ops->upload(be, &dev, (size_t)i * sizeof logits, logits, sizeof logits);
    if (r < 0) {
        printf("FAIL: device logits: %d\n", r);
        eng_backend_free(be);
        return 1;
    }
    s_case(be, &dev, logits, "greedy", (eng_sampler_params_t){.temperature = 0, .top_p = 1});
    s_case(be, &dev, logits, "temperature 0.7", (eng_sampler_params_t){.temperature = 0.7f, .top_p = 1});
    s_case(be, &dev, logits, "top-k 50", (eng_sampler_params_t){.temperature = 1.0f, .top_k = 50, .top_p = 1});
    s_case(be, &dev, logits, "top-p 0.9", (eng_sampler_params_t){.temperature = 0.8f, .top_p = 0.9f});
    s_case(be, &dev, logits, "top-k 100 top-p 0.95 min-p 0.05",
           (eng_sampler_params_t){.temperature = 1.2f, .top_k = 100, .top_p = 0.95f, .min_p = 0.05f});
    be->ops->release(be, &dev);
    eng_backend_free(be);
    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}

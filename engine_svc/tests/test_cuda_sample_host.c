/* test_cuda_sample_host.c (label unit, CUDA builds): the GPU sampler's algorithm (eng_cuda_sample.cu:
 * radix prefix selects over order-preserving keys, fixed-point masses, tie runs resolved by id) run
 * on the host through eng_cuda_sample_host -- the kernel's template code instantiated for one
 * thread, no GPU needed -- against the CPU sampler eng_sampler_sample with the same (seed, step).
 * Both draw with eng_sampler_uniform, so they must pick the same token for (nearly) every draw:
 * only a uniform landing within ~1e-9 of a CDF boundary may differ (fixed point vs double sums).
 * Logits with ties at the top and inside the body; cases cover greedy, temperature, top-k (also
 * cutting through a tie run), top-p (also keeping one token), min-p and their combinations, and a
 * tiny and a Qwen-size vocabulary. The GPU run of the same kernel is test_cuda_sample (label gpu). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cuda.h"
#include "eng_sampler.h"

static void s_fill(float *l, uint32_t V, uint64_t seed) {
    uint64_t x = seed * 2654435761u + 88172645463325252ull;
    for (uint32_t v = 0; v < V; v++) {
        double s = 0;
        for (int k = 0; k < 4; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (double)(x >> 11) / 9007199254740992.0;
        }
        l[v] = (float)((s - 2.0) * 4.3);
    }
}

/* draws n tokens with steps 0..n-1 both ways; returns how many agree, fills hist (GPU algorithm) */
static uint32_t s_compare(const float *logits, uint32_t V, eng_sampler_params_t p, uint32_t n,
                          uint32_t *hist) {
    eng_sampler_t *cs = NULL;
    assert_int_equal(eng_sampler_new(V, &cs), 0);
    float *row = malloc(V * sizeof *row);
    assert_non_null(row);
    p.repetition_penalty = 1.0f;
    p.max_tokens = n;
    uint32_t agree = 0;
    int32_t dummy = 0;
    for (uint32_t i = 0; i < n; i++) {
        eng_cuda_sample_row_t rw = {.temperature = p.temperature, .top_k = p.top_k,
                                    .top_p = p.top_p, .min_p = p.min_p, .seed = p.seed, .step = i};
        int32_t a = -1;
        assert_int_equal(eng_cuda_sample_host(logits, V, &rw, &a), 0);
        assert_true(a >= 0 && (uint32_t)a < V);
        if (hist)
            hist[a]++;
        memcpy(row, logits, V * sizeof *row);
        eng_sampler_seq_t sq = {.prompt = &dummy, .output = &dummy, .n_output = i};
        eng_sampler_result_t res;
        assert_int_equal(eng_sampler_sample(cs, &p, &sq, row, &res), 0);
        agree += res.token == a;
    }
    free(row);
    eng_sampler_free(cs);
    return agree;
}

#define V5 5000

static float g_l[V5];

static void s_setup_ties(void) {
    s_fill(g_l, V5, 1);
    g_l[17] = g_l[4000] = g_l[23] = 12.0f; /* a tie run at the top */
    g_l[100] = g_l[101] = g_l[102] = g_l[103] = 6.5f;
}

static void s_case(const char *name, eng_sampler_params_t p, uint32_t n) {
    p.seed = 1234;
    uint32_t agree = s_compare(g_l, V5, p, n, NULL);
    printf("%-40s agree %u/%u\n", name, agree, n);
    assert_true(agree >= n - n / 1000);
}

static void test_cases(void **state) {
    (void)state;
    s_setup_ties();
    s_case("greedy", (eng_sampler_params_t){.temperature = 0, .top_p = 1}, 50);
    s_case("temperature 0.7", (eng_sampler_params_t){.temperature = 0.7f, .top_p = 1}, 3000);
    s_case("temperature 3 (flat)", (eng_sampler_params_t){.temperature = 3.0f, .top_p = 1}, 3000);
    s_case("top-k 50", (eng_sampler_params_t){.temperature = 1.0f, .top_k = 50, .top_p = 1}, 3000);
    s_case("top-k 1", (eng_sampler_params_t){.temperature = 1.0f, .top_k = 1, .top_p = 1}, 200);
    s_case("top-p 0.9", (eng_sampler_params_t){.temperature = 0.8f, .top_p = 0.9f}, 3000);
    s_case("top-p 0.001", (eng_sampler_params_t){.temperature = 0.8f, .top_p = 0.001f}, 200);
    s_case("min-p 0.05", (eng_sampler_params_t){.temperature = 1.0f, .top_p = 1, .min_p = 0.05f}, 3000);
    s_case("top-k 100 top-p 0.95 min-p 0.05",
           (eng_sampler_params_t){.temperature = 1.2f, .top_k = 100, .top_p = 0.95f, .min_p = 0.05f},
           3000);
    s_case("top-k 4000 top-p 0.99",
           (eng_sampler_params_t){.temperature = 2.0f, .top_k = 4000, .top_p = 0.99f}, 1000);
}

/* top-k through the middle of a tie run: the lower ids of the run are kept */
static void test_tie_run(void **state) {
    (void)state;
    s_setup_ties();
    static uint32_t hist[V5];
    memset(hist, 0, sizeof hist);
    eng_sampler_params_t p = {.temperature = 1.0f, .top_k = 2, .top_p = 1, .seed = 9};
    uint32_t n = 4000, agree = s_compare(g_l, V5, p, n, hist);
    printf("top-k 2 inside the tie {17, 23, 4000}: 17 x%u, 23 x%u, 4000 x%u, agree %u/%u\n",
           hist[17], hist[23], hist[4000], agree, n);
    assert_int_equal(hist[17] + hist[23], n);
    assert_true(hist[17] > n / 2 - 200 && hist[17] < n / 2 + 200); /* 50/50 within ~6 sigma */
    assert_true(agree >= n - n / 1000);
    memset(hist, 0, sizeof hist);
    p.top_k = 3;
    s_compare(g_l, V5, p, n, hist);
    assert_int_equal(hist[17] + hist[23] + hist[4000], n);
    assert_true(hist[4000] > n / 3 - 200 && hist[4000] < n / 3 + 200);
}

/* every token equal: top-p 0.5 keeps the lower half of the ids */
static void test_flat(void **state) {
    (void)state;
    enum { V = 64 };
    float l[V];
    for (int v = 0; v < V; v++)
        l[v] = 1.0f;
    static uint32_t hist[V];
    memset(hist, 0, sizeof hist);
    eng_sampler_params_t p = {.temperature = 1.0f, .top_p = 0.5f, .seed = 3};
    uint32_t n = 6400, agree = s_compare(l, V, p, n, hist);
    uint32_t low = 0;
    for (int v = 0; v < V / 2; v++)
        low += hist[v];
    printf("flat 64, top-p 0.5: %u/%u draws in ids 0..31, agree %u\n", low, n, agree);
    assert_int_equal(low, n);
    assert_true(agree >= n - n / 1000);
}

static void test_vocab_sizes(void **state) {
    (void)state;
    float tiny[7] = {0.5f, -1.0f, 2.0f, 2.0f, -3.0f, 0.0f, -0.0f};
    eng_sampler_params_t p = {.temperature = 0.9f, .top_p = 1, .seed = 5};
    uint32_t agree = s_compare(tiny, 7, p, 2000, NULL);
    printf("V 7: agree %u/2000\n", agree);
    assert_true(agree >= 1998);
    p.top_k = 3;
    p.top_p = 0.8f;
    agree = s_compare(tiny, 7, p, 2000, NULL);
    assert_true(agree >= 1998);
    enum { VQ = 152064 };
    float *big = malloc(VQ * sizeof *big);
    assert_non_null(big);
    s_fill(big, VQ, 2);
    eng_sampler_params_t q = {.temperature = 0.7f, .top_k = 20, .top_p = 0.8f, .seed = 11};
    agree = s_compare(big, VQ, q, 60, NULL);
    eng_sampler_params_t r = {.temperature = 1.0f, .top_p = 0.95f, .seed = 12};
    uint32_t agree2 = s_compare(big, VQ, r, 30, NULL);
    printf("V 152064: agree %u/60 (top-k 20, top-p 0.8), %u/30 (top-p 0.95)\n", agree, agree2);
    assert_true(agree >= 59 && agree2 >= 29);
    free(big);
}

/* The split path's sparse bin lists (eng_cuda_sample_host_split, sparse 1) against the same
 * selects over the whole row (sparse 0) and the one-block kernel's host run (eng_cuda_sample_host,
 * compaction cap V/2): the same token for every draw, bit for bit. Rows: the full-size dummy
 * model's logits (Gaussian, sd 0.78: top-p 0.95 keeps ~75% of the row, so nothing compacts), the
 * flat test row, quantised logits (tie runs at every bin), an all-equal row and a tiny vocabulary.
 * One line per row and parameter set; the sparse path must have run for the dummy-like rows. */
static uint32_t s_sparse_case(const char *rname, const float *l, uint32_t V, float temp, float top_p,
                              uint32_t n, uint32_t *ret_sparse) {
    uint32_t same = 0, sparse = 0;
    for (uint32_t i = 0; i < n; i++) {
        eng_cuda_sample_row_t rw = {.temperature = temp, .top_p = top_p, .seed = 77 + i, .step = i};
        int32_t a = -1, b = -2, c = -3, d = -4;
        int pa = -1, pb = -1, pd = -1;
        assert_int_equal(eng_cuda_sample_host_split(l, V, &rw, 1, 8192, &a, &pa), 0);
        assert_int_equal(eng_cuda_sample_host_split(l, V, &rw, 0, 8192, &b, &pb), 0);
        assert_int_equal(eng_cuda_sample_host_split(l, V, &rw, 1, 64, &d, &pd), 0);
        assert_int_equal(eng_cuda_sample_host(l, V, &rw, &c), 0);
        same += a == b && a == c && a == d;
        sparse += pa == 2;
        assert_int_equal(pa, pd);
        assert_int_not_equal(pa, 3); /* the draw's bin is always among the gathered ones */
    }
    printf("sparse bin lists, %s, T %.2f top-p %.2f: %u/%u draws identical to the whole row and "
           "the one-block kernel (bound all), sparse path on %u: %s\n",
           rname, (double)temp, (double)top_p, same, n, sparse, same == n ? "PASS" : "FAIL");
    *ret_sparse += sparse;
    return n - same;
}

static void test_sparse(void **state) {
    (void)state;
    enum { VQ = 152064 };
    float *g = malloc(VQ * sizeof *g), *f = malloc(VQ * sizeof *f), *q = malloc(VQ * sizeof *q);
    assert_true(g && f && q);
    s_fill(g, VQ, 3); /* Irwin-Hall sd 2.48: rescaled to the dummy model's 0.78 */
    for (uint32_t v = 0; v < VQ; v++)
        g[v] *= 0.784f / 2.4826f;
    s_fill(f, VQ, 4);
    for (uint32_t v = 0; v < VQ; v++)
        q[v] = roundf(g[v] * 16.0f) / 16.0f; /* ties everywhere */
    static float eq[5000];
    for (int v = 0; v < 5000; v++)
        eq[v] = 0.25f;
    const float tiny[7] = {0.5f, -1.0f, 2.0f, 2.0f, -3.0f, 0.0f, -0.0f};
    const struct {
        float t, p;
    } ps[] = {{0.8f, 0.95f}, {0.8f, 0.9f}, {0.8f, 0.5f}, {1.3f, 0.99f}, {0.8f, 1.0f}, {1.5f, 1.0f}};
    uint32_t bad = 0, sp_dummy = 0, sp_other = 0;
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        bad += s_sparse_case("dummy-like V 152064", g, VQ, ps[i].t, ps[i].p, 12, &sp_dummy);
        bad += s_sparse_case("quantised V 152064", q, VQ, ps[i].t, ps[i].p, 6, &sp_other);
        bad += s_sparse_case("all-equal V 5000", eq, 5000, ps[i].t, ps[i].p, 6, &sp_other);
        bad += s_sparse_case("V 7", tiny, 7, ps[i].t, ps[i].p, 16, &sp_other);
    }
    bad += s_sparse_case("flat sd 2.5 V 152064", f, VQ, 4.0f, 0.99f, 8, &sp_other);
    bad += s_sparse_case("flat sd 2.5 V 152064", f, VQ, 0.8f, 0.95f, 8, &sp_other);
    printf("sparse bin lists: %u draws differ (bound 0); sparse path on %u dummy-like draws (bound "
           "> 0), %u others: %s\n",
           bad, sp_dummy, sp_other, bad == 0 && sp_dummy > 0 ? "PASS" : "FAIL");
    assert_int_equal(bad, 0);
    assert_true(sp_dummy > 0);
    free(g);
    free(f);
    free(q);
}

static void test_bad_args(void **state) {
    (void)state;
    float l[4] = {0};
    eng_cuda_sample_row_t rw = {.temperature = 1.0f, .top_p = 1};
    int32_t id;
    assert_int_equal(eng_cuda_sample_host(NULL, 4, &rw, &id), -EINVAL);
    assert_int_equal(eng_cuda_sample_host(l, 0, &rw, &id), -EINVAL);
    assert_int_equal(eng_cuda_sample_host(l, 1u << 22, &rw, &id), -EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),       cmocka_unit_test(test_tie_run),
        cmocka_unit_test(test_flat),        cmocka_unit_test(test_vocab_sizes),
        cmocka_unit_test(test_bad_args),    cmocka_unit_test(test_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

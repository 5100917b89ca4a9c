/* test_eng_sampler.c: unit tests of eng_sampler. Each parameter's effect is checked against a
 * straightforward independent computation written here (HF-style ascending-cumsum top-p, min-p
 * threshold on softmax, vLLM/HF penalty formulas), sampled frequencies against the expected
 * distribution, seed determinism, and the validation messages. */
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

#include "eng_sampler.h"

#define V 12
static const float s_logits[V] = {1.0f, 2.5f, -0.5f, 2.0f, 0.3f, 3.0f, -2.0f, 1.5f, 2.9f, 0.0f, -1.0f, 0.7f};

static eng_sampler_params_t s_params(void) {
    eng_sampler_params_t p = {0};
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.repetition_penalty = 1.0f;
    p.max_tokens = 100;
    return p;
}

/* reference: probabilities after temperature, top-k, HF top-p (ascending cumsum), min-p */
static void s_ref_probs(const float *logits, const eng_sampler_params_t *p, double *ret) {
    double l[V], mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        l[i] = (double)logits[i] / p->temperature;
        mx = l[i] > mx ? l[i] : mx;
    }
    if (p->top_k > 0) { /* keep tokens whose logit >= the k-th largest */
        double sorted[V];
        memcpy(sorted, l, sizeof sorted);
        for (int i = 0; i < V; i++)
            for (int j = i + 1; j < V; j++)
                if (sorted[j] > sorted[i]) {
                    double t = sorted[i];
                    sorted[i] = sorted[j];
                    sorted[j] = t;
                }
        for (int i = 0; i < V; i++)
            if (l[i] < sorted[p->top_k - 1])
                l[i] = -INFINITY;
    }
    double pr[V], sum = 0;
    for (int i = 0; i < V; i++)
        sum += pr[i] = exp(l[i] - mx);
    for (int i = 0; i < V; i++)
        pr[i] /= sum;
    if (p->top_p < 1.0f) { /* ascending order; drop while cumsum <= 1 - top_p, keep the max */
        int order[V];
        for (int i = 0; i < V; i++)
            order[i] = i;
        for (int i = 0; i < V; i++)
            for (int j = i + 1; j < V; j++)
                if (pr[order[j]] < pr[order[i]]) {
                    int t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
        double c = 0;
        for (int i = 0; i < V - 1; i++) {
            c += pr[order[i]];
            if (c <= 1.0 - p->top_p)
                pr[order[i]] = 0;
        }
    }
    if (p->min_p > 0) {
        double pmax = 0;
        for (int i = 0; i < V; i++)
            pmax = pr[i] > pmax ? pr[i] : pmax;
        for (int i = 0; i < V; i++)
            if (pr[i] < p->min_p * pmax)
                pr[i] = 0;
    }
    sum = 0;
    for (int i = 0; i < V; i++)
        sum += pr[i];
    for (int i = 0; i < V; i++)
        ret[i] = pr[i] / sum;
}

/* draws N tokens (seeds 0..N-1) and compares frequencies with the reference distribution */
static void s_check_distribution(const eng_sampler_params_t *p0) {
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    double want[V];
    s_ref_probs(s_logits, p0, want);
    enum { N = 20000 };
    int hist[V] = {0};
    eng_sampler_seq_t seq = {0};
    for (int n = 0; n < N; n++) {
        float l[V];
        memcpy(l, s_logits, sizeof l);
        eng_sampler_params_t p = *p0;
        p.seed = (uint64_t)n * 7919u + 13u;
        eng_sampler_result_t r;
        assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
        assert_true(r.token >= 0 && r.token < V);
        hist[r.token]++;
    }
    for (int i = 0; i < V; i++) {
        double got = (double)hist[i] / N;
        if (want[i] == 0)
            assert_int_equal(hist[i], 0); /* filtered tokens never come */
        else if (fabs(got - want[i]) > 0.015) {
            fprintf(stderr, "token %d: got %.4f want %.4f\n", i, got, want[i]);
            fail();
        }
    }
    eng_sampler_free(s);
}

static void test_greedy(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    eng_sampler_params_t p = s_params();
    p.temperature = 0;
    eng_sampler_seq_t seq = {0};
    float l[V];
    memcpy(l, s_logits, sizeof l);
    eng_sampler_result_t r;
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_int_equal(r.token, 5);
    memcpy(l, s_logits, sizeof l);
    l[8] = 3.0f; /* tie: lowest id wins, as torch.argmax */
    l[2] = 3.0f;
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_int_equal(r.token, 2);
    eng_sampler_free(s);
}

static void test_temperature(void **state) {
    (void)state;
    eng_sampler_params_t p = s_params();
    s_check_distribution(&p);
    p.temperature = 0.5f;
    s_check_distribution(&p);
    p.temperature = 2.0f;
    s_check_distribution(&p);
}

static void test_top_k(void **state) {
    (void)state;
    eng_sampler_params_t p = s_params();
    p.top_k = 3;
    s_check_distribution(&p);
    p.top_k = 1;
    s_check_distribution(&p);
    p.top_k = V; /* all */
    s_check_distribution(&p);
}

static void test_top_p(void **state) {
    (void)state;
    eng_sampler_params_t p = s_params();
    p.top_p = 0.5f;
    s_check_distribution(&p);
    p.top_p = 0.9f;
    p.temperature = 0.7f;
    s_check_distribution(&p);
    p.top_p = 0.01f; /* keeps only the top token */
    s_check_distribution(&p);
}

static void test_min_p(void **state) {
    (void)state;
    eng_sampler_params_t p = s_params();
    p.min_p = 0.3f;
    s_check_distribution(&p);
    p.min_p = 0.05f;
    p.top_k = 6;
    s_check_distribution(&p);
}

static void test_penalties(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    eng_sampler_params_t p = s_params();
    p.temperature = 0;
    p.repetition_penalty = 1.5f;
    p.presence_penalty = 0.25f;
    p.frequency_penalty = 0.5f;
    const int32_t prompt[] = {5, 2, 5, 99, -1};     /* out-of-range ids are ignored */
    const int32_t output[] = {1, 8, 1, 1, 2};
    eng_sampler_seq_t seq = {.prompt = prompt, .n_prompt = 5, .output = output, .n_output = 5};
    float l[V], want[V];
    memcpy(l, s_logits, sizeof l);
    /* independent computation: repetition once per distinct id of prompt+output, then
     * presence/frequency from output counts */
    int seen[V] = {0}, cnt[V] = {0};
    for (int i = 0; i < 5; i++) {
        if (prompt[i] >= 0 && prompt[i] < V)
            seen[prompt[i]] = 1;
        seen[output[i]] = 1;
        cnt[output[i]]++;
    }
    for (int i = 0; i < V; i++) {
        float x = s_logits[i];
        if (seen[i])
            x = x > 0 ? x / 1.5f : x * 1.5f;
        if (cnt[i])
            x -= 0.25f + 0.5f * (float)cnt[i];
        want[i] = x;
    }
    eng_sampler_result_t r;
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    for (int i = 0; i < V; i++)
        assert_float_equal(l[i], want[i], 1e-6);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (want[i] > want[best])
            best = i;
    assert_int_equal(r.token, best);
    assert_int_not_equal(r.token, 5); /* the penalty changed the argmax */
    /* scratch state is clean: the same call again gives the same result */
    memcpy(l, s_logits, sizeof l);
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    for (int i = 0; i < V; i++)
        assert_float_equal(l[i], want[i], 1e-6);
    /* negative logits are multiplied */
    p.presence_penalty = p.frequency_penalty = 0;
    const int32_t neg[] = {6};
    seq = (eng_sampler_seq_t){.prompt = neg, .n_prompt = 1};
    memcpy(l, s_logits, sizeof l);
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_float_equal(l[6], -3.0f, 1e-6);
    eng_sampler_free(s);
}

static void test_suppression(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    eng_sampler_params_t p = s_params();
    p.temperature = 0;
    p.min_tokens = 2;
    const int32_t eos[] = {5}, stop[] = {8};
    const int32_t out[] = {1, 1};
    eng_sampler_seq_t seq = {.eos_ids = eos, .n_eos = 1, .stop_ids = stop, .n_stop = 1, .output = out};
    float l[V];
    eng_sampler_result_t r;
    memcpy(l, s_logits, sizeof l);
    seq.n_output = 1; /* before min_tokens: eos (5) and stop (8) banned */
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_int_equal(r.token, 1);
    memcpy(l, s_logits, sizeof l);
    seq.n_output = 2;
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_int_equal(r.token, 5);
    p.ignore_eos = true; /* eos never sampled, stop ids allowed */
    memcpy(l, s_logits, sizeof l);
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    assert_int_equal(r.token, 8);
    eng_sampler_free(s);
}

static void test_seed(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    eng_sampler_params_t p = s_params();
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        int32_t *dst = run == 0 ? a : run == 1 ? b : c;
        eng_sampler_seq_t seq = {.output = dst};
        for (int i = 0; i < 64; i++) {
            float l[V];
            memcpy(l, s_logits, sizeof l);
            seq.n_output = (uint32_t)i;
            eng_sampler_result_t r;
            assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
            dst[i] = r.token;
        }
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    /* the uniform is a pure function of (seed, step), in [0, 1) */
    assert_true(eng_sampler_uniform(1, 2) == eng_sampler_uniform(1, 2));
    assert_true(eng_sampler_uniform(1, 2) != eng_sampler_uniform(1, 3));
    for (uint64_t i = 0; i < 1000; i++) {
        double u = eng_sampler_uniform(7, i);
        assert_true(u >= 0 && u < 1);
    }
    eng_sampler_free(s);
}

static void test_logprobs(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    eng_sampler_params_t p = s_params();
    p.temperature = 0;
    p.n_logprobs = 4;
    p.repetition_penalty = 2.0f; /* logprobs stay those of the raw logits */
    const int32_t prompt[] = {5};
    eng_sampler_seq_t seq = {.prompt = prompt, .n_prompt = 1};
    float l[V];
    memcpy(l, s_logits, sizeof l);
    eng_sampler_result_t r;
    assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
    double lse = 0;
    for (int i = 0; i < V; i++)
        lse += exp(s_logits[i]);
    lse = log(lse);
    assert_int_equal(r.n_top, 4);
    const int32_t want_ids[4] = {5, 8, 1, 3};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r.top_ids[i], want_ids[i]);
        assert_float_equal(r.top_logprobs[i], s_logits[want_ids[i]] - lse, 1e-5);
    }
    assert_int_equal(r.token, 8); /* 5 penalised: 1.5 < 2.9 */
    assert_float_equal(r.logprob, s_logits[8] - lse, 1e-5);
    eng_sampler_free(s);
}

static void s_expect_bad(const Omnipipe__SamplingParams *sp, int want_rc, const char *want_msg) {
    eng_sampler_defaults_t d = {.temperature = 1, .top_p = 1, .repetition_penalty = 1};
    eng_sampler_params_t p;
    char err[256] = "";
    assert_int_equal(eng_sampler_params_from_proto(sp, &d, 10, 100, &p, err, sizeof err), want_rc);
    assert_string_equal(err, want_msg);
}

static void test_validation(void **state) {
    (void)state;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_top_p = true;
    sp.top_p = 1.5f;
    s_expect_bad(&sp, -EINVAL, "sampling.top_p: must be in (0, 1], got 1.5");
    sp.top_p = 0.0f;
    s_expect_bad(&sp, -EINVAL, "sampling.top_p: must be in (0, 1], got 0");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_temperature = true;
    sp.temperature = -0.5f;
    s_expect_bad(&sp, -EINVAL, "sampling.temperature: must be >= 0, got -0.5");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_top_k = true;
    sp.top_k = -2;
    s_expect_bad(&sp, -EINVAL, "sampling.top_k: must be -1, 0 (off) or positive, got -2");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_min_p = true;
    sp.min_p = 1.25f;
    s_expect_bad(&sp, -EINVAL, "sampling.min_p: must be in [0, 1], got 1.25");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_repetition_penalty = true;
    sp.repetition_penalty = 0;
    s_expect_bad(&sp, -EINVAL, "sampling.repetition_penalty: must be > 0, got 0");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_presence_penalty = true;
    sp.presence_penalty = 2.5f;
    s_expect_bad(&sp, -EINVAL, "sampling.presence_penalty: must be in [-2, 2], got 2.5");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_frequency_penalty = true;
    sp.frequency_penalty = -3;
    s_expect_bad(&sp, -EINVAL, "sampling.frequency_penalty: must be in [-2, 2], got -3");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = true;
    sp.max_tokens = 0;
    s_expect_bad(&sp, -EINVAL, "sampling.max_tokens: must be >= 1, got 0");
    sp.max_tokens = 101;
    s_expect_bad(&sp, -EINVAL, "sampling.max_tokens: must be <= the model length 100, got 101");
    sp.max_tokens = 95;
    s_expect_bad(&sp, -E2BIG,
                 "sampling.max_tokens: prompt (10 tokens) + max_tokens (95) exceeds the model length 100");
    sp.max_tokens = 5;
    sp.has_min_tokens = true;
    sp.min_tokens = 6;
    s_expect_bad(&sp, -EINVAL, "sampling.min_tokens: must be <= max_tokens (5), got 6");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_logprobs = true;
    sp.logprobs = 21;
    s_expect_bad(&sp, -EINVAL, "sampling.logprobs: must be <= 20, got 21");
    sp = (Omnipipe__SamplingParams)OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_temperature = true;
    sp.temperature = NAN;
    s_expect_bad(&sp, -EINVAL, "sampling.temperature: must be >= 0, got nan");
}

static void test_defaults(void **state) {
    (void)state;
    eng_sampler_defaults_t d;
    char err[256] = "";
    assert_int_equal(eng_sampler_defaults_load(OM_SHARED_DIR "/fixtures/tiny-omni", &d, err, sizeof err), 0);
    assert_false(d.do_sample);
    assert_int_equal(d.n_eos, 2);
    assert_int_equal(d.eos_ids[0], 151645);
    assert_int_equal(d.eos_ids[1], 151643);
    /* unset fields: greedy (do_sample false), max_tokens = room left */
    eng_sampler_params_t p;
    assert_int_equal(eng_sampler_params_from_proto(NULL, &d, 10, 100, &p, err, sizeof err), 0);
    assert_true(p.temperature == 0.0f);
    assert_int_equal(p.max_tokens, 90);
    assert_true(p.repetition_penalty == 1.0f);
    /* a sampling default applies to fields left unset, request fields win */
    d.do_sample = true;
    d.temperature = 0.6f;
    d.top_p = 0.95f;
    d.top_k = 20;
    d.max_new_tokens = 30;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_top_k = true;
    sp.top_k = 5;
    sp.has_seed = true;
    sp.seed = 77;
    assert_int_equal(eng_sampler_params_from_proto(&sp, &d, 10, 100, &p, err, sizeof err), 0);
    assert_float_equal(p.temperature, 0.6f, 0);
    assert_float_equal(p.top_p, 0.95f, 0);
    assert_int_equal(p.top_k, 5);
    assert_int_equal(p.seed, 77);
    assert_int_equal(p.max_tokens, 30);
    sp.has_greedy = true; /* greedy forces temperature 0 */
    sp.greedy = true;
    assert_int_equal(eng_sampler_params_from_proto(&sp, &d, 10, 100, &p, err, sizeof err), 0);
    assert_true(p.temperature == 0.0f);
    /* no generation_config.json: transformers defaults */
    assert_int_equal(eng_sampler_defaults_load("/nonexistent-dir", &d, err, sizeof err), 0);
    assert_false(d.do_sample);
    assert_int_equal(d.n_eos, 0);
}

/* a larger vocabulary, where the sampler only sorts a growing prefix of candidates: the token must
 * equal a full sort + truncate + inverse-CDF reference for every seed */
#define BV 3000
static int s_ref_cmp(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (l[x] != l[y])
        return l[x] > l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static int32_t s_ref_draw(const float *raw, const eng_sampler_params_t *p, double u) {
    static float l[BV];
    static int32_t idx[BV];
    static float pr[BV];
    for (int v = 0; v < BV; v++) {
        l[v] = raw[v] * (1.0f / p->temperature);
        idx[v] = v;
    }
    qsort_r(idx, BV, sizeof *idx, s_ref_cmp, l);
    uint32_t n = p->top_k > 0 && p->top_k < BV ? (uint32_t)p->top_k : BV;
    float mx = l[idx[0]];
    double total = 0;
    for (uint32_t i = 0; i < n; i++)
        pr[i] = expf(l[idx[i]] - mx);
    if (n == BV) /* whole vocabulary: summed in id order */
        for (int v = 0; v < BV; v++)
            total += expf(l[v] - mx);
    else
        for (uint32_t i = 0; i < n; i++)
            total += pr[i];
    bool cut = n < BV;
    if (p->top_p < 1) {
        double before = 0;
        uint32_t i = 0;
        while (i < n && before < p->top_p * total)
            before += pr[i++];
        n = i ? i : 1;
        cut = true;
    }
    if (p->min_p > 0) {
        uint32_t i = 1;
        while (i < n && pr[i] >= p->min_p * pr[0])
            i++;
        n = i;
        cut = true;
    }
    double mass = 0;
    for (uint32_t i = 0; i < n; i++)
        mass += pr[i];
    if (!cut)
        mass = total;
    double c = 0;
    for (uint32_t i = 0; i < n; i++) {
        c += pr[i];
        if (u * mass < c)
            return idx[i];
    }
    return idx[n - 1];
}

static void test_large_vocab(void **state) {
    (void)state;
    static float base[BV], l[BV];
    uint64_t x = 12345;
    for (int v = 0; v < BV; v++) { /* a peaked, LM-like distribution: noise plus a few spikes */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        base[v] = (float)((double)(x >> 11) / 9007199254740992.0 * 6.0 - 3.0);
    }
    for (int k = 0; k < 6; k++)
        base[(k * 977 + 13) % BV] += 6.0f + (float)k;
    const struct { float t, top_p, min_p; int32_t top_k; } cfg[] = {
        {1.0f, 1.0f, 0, 0}, {0.7f, 0.9f, 0, 0}, {1.0f, 1.0f, 0.01f, 0}, {1.3f, 1.0f, 0, 700},
        {2.0f, 0.99f, 0, 0}, {1.0f, 0.5f, 0.2f, 50},
    };
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(BV, &s), 0);
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        eng_sampler_params_t p = s_params();
        p.temperature = cfg[c].t;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.top_k = cfg[c].top_k;
        for (uint64_t seed = 0; seed < 300; seed++) {
            p.seed = seed;
            memcpy(l, base, sizeof l);
            eng_sampler_seq_t seq = {0};
            eng_sampler_result_t r;
            assert_int_equal(eng_sampler_sample(s, &p, &seq, l, &r), 0);
            int32_t want = s_ref_draw(base, &p, eng_sampler_uniform(seed, 0));
            if (r.token != want) {
                fprintf(stderr, "config %zu seed %llu: got %d want %d\n", c, (unsigned long long)seed,
                        r.token, want);
                fail();
            }
        }
    }
    eng_sampler_free(s);
}

/* eng_sampler_edits (what a device sampler applies) reproduces eng_sampler_sample's processed
 * logits bit for bit: penalties, suppression before min_tokens, ignore_eos, duplicates and
 * out-of-range ids; and refuses a too-small output array */
static void test_edits(void **state) {
    (void)state;
    eng_sampler_t *s = NULL;
    assert_int_equal(eng_sampler_new(V, &s), 0);
    const int32_t prompt[] = {5, 2, 5, 99, -1, 7};
    const int32_t output[] = {1, 8, 1, 1, 2, 6};
    const int32_t eos[] = {5, 3}, stop[] = {8, 1};
    const struct { float rp, pres, freq; uint32_t min_tokens; bool ignore_eos; } cfg[] = {
        {1.5f, 0.25f, 0.5f, 0, false}, {0.8f, 0, 0, 0, false}, {1, -0.5f, 0.3f, 0, false},
        {1, 0, 0, 10, false},          {1, 0, 0, 0, true},     {1.3f, 0.1f, 0.2f, 10, true},
        {1, 0, 0, 0, false},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        eng_sampler_params_t p = s_params();
        p.temperature = 0; /* greedy: the processed row is left unscaled */
        p.repetition_penalty = cfg[c].rp;
        p.presence_penalty = cfg[c].pres;
        p.frequency_penalty = cfg[c].freq;
        p.min_tokens = cfg[c].min_tokens;
        p.ignore_eos = cfg[c].ignore_eos;
        eng_sampler_seq_t seq = {.prompt = prompt, .n_prompt = 6, .output = output, .n_output = 6,
                                 .eos_ids = eos, .n_eos = 2, .stop_ids = stop, .n_stop = 2};
        eng_sampler_edit_t e[16];
        int n = eng_sampler_edits(s, &p, &seq, e, 16);
        assert_true(n >= 0);
        float want[V], got[V];
        memcpy(want, s_logits, sizeof want);
        memcpy(got, s_logits, sizeof got);
        eng_sampler_result_t r;
        assert_int_equal(eng_sampler_sample(s, &p, &seq, want, &r), 0);
        int seen[V] = {0};
        for (int i = 0; i < n; i++) {
            assert_true(e[i].id >= 0 && e[i].id < V);
            assert_int_equal(seen[e[i].id]++, 0); /* unique ids */
            float l = got[e[i].id];
            if (e[i].rp != 1.0f)
                l = l > 0 ? l / e[i].rp : l * e[i].rp;
            l -= e[i].sub;
            if (e[i].suppress)
                l = -INFINITY;
            got[e[i].id] = l;
        }
        printf("edits config %zu: %d edits, processed rows identical: %s\n", c, n,
               memcmp(got, want, sizeof got) == 0 ? "yes" : "no");
        assert_memory_equal(got, want, sizeof got);
        if (c == sizeof cfg / sizeof cfg[0] - 1)
            assert_int_equal(n, 0);
        if (n > 1)
            assert_int_equal(eng_sampler_edits(s, &p, &seq, e, (uint32_t)n - 1), -ENOSPC);
    }
    eng_sampler_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),      cmocka_unit_test(test_temperature),
        cmocka_unit_test(test_top_k),       cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),       cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_suppression), cmocka_unit_test(test_seed),
        cmocka_unit_test(test_logprobs),    cmocka_unit_test(test_validation),
        cmocka_unit_test(test_defaults),    cmocka_unit_test(test_large_vocab),
        cmocka_unit_test(test_edits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

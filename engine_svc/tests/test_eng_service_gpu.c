/* test_eng_service_gpu.c (label gpu): eng_service on the CUDA backend with the tiny fixtures, on both
 * runners. Exit 77 (skipped) without a CUDA device.
 *
 * vtable runner (OMNIPIPE_CUDA_RUNNER=vtable: the f32 model graph over the backend ops): the golden
 * prompts run alone, all in one batch and chunked (token budget 7), compared with transformers'
 * fp32 greedy tokens; where runs part, the step must be a near-tie (reference top-2 gap or ours
 * within TOL).
 * fast runner (the default: bf16 eng_cuda_model, CUDA graphs, GPU sampling hook):
 *  1. teacher-forced against transformers' bf16 run: one request per (prompt, step) whose prompt is
 *     the golden prompt plus the reference's first s tokens (all submitted together: batched,
 *     chunked, sharing prefix-cache blocks), max_tokens 1 with top-2 logprobs. The measured error
 *     is the largest difference between our top-2 gap and the reference's; wherever the
 *     reference's gap exceeds it, our token must be the reference's top-1 (and that must hold for
 *     at least half the steps, the error must stay < 0.25) -- test_cuda_model.c's criterion;
 *  2. free-running greedy alone == batched == chunked, except at our own near-ties (gap within
 *     the measured error);
 *  3. prefix cache: a second turn (turn-1 prompt + its output + more tokens) on the service that
 *     served turn 1 reports cached tokens and generates the same tokens as a service without the
 *     prefix cache (except at near-ties);
 *  4. GPU sampling: greedy without logprobs == greedy with logprobs and ignore_eos (also on the
 *     device, through the hook's logit edits and logprobs) except at near-ties; temperature/top-k/top-p with one seed
 *     gives the same tokens twice, another seed changes them (same seed batched with other
 *     requests is printed: bf16 batch kernels may move a draw across a CDF boundary).
 * fused sampling (test_fused_*): the same sampled requests (top-p, top-k, min-p, penalties,
 * logprobs, several seeds; alone and four at a time) with OMNIPIPE_SAMPLE_FUSED=1 (the default: the
 * step left in flight, the draw queued behind it), with =0 (the synchronised step, then the draw)
 * and with =0 plus OM_CUDA_SAMPLE_SPARSE=0 (the sampler's whole-row selects instead of its sparse
 * bin lists: the path before both changes): tokens and logprobs identical bit for bit; one "fused
 * sampling" line per case and batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_service.h"

#define TOL 0.05 /* logits */
#define NSTEP 24
#define MAXP 8
#define MAXTOK 512

/* fixtures root: $OM_SHARED_DIR (the device machine's copy) or the configured path */
static const char *s_shared(void) {
    const char *e = getenv("OM_SHARED_DIR");
    return e && *e ? e : OM_SHARED_DIR;
}

typedef struct t_run {
    int32_t tokens[NSTEP];
    float gap[NSTEP]; /* top1 - top2 raw logprob at each step (0 without logprobs) */
    uint32_t n;
    uint32_t cached;  /* cached_tokens reported on the first SeqStep */
    int finish;
} t_run_t;

typedef struct t_req {
    uint32_t max_tokens;
    uint32_t logprobs;    /* 0 = none (device sampling possible) */
    float temperature;    /* < 0 = leave unset (greedy default of the tiny fixtures) */
    int32_t top_k;
    float top_p;
    uint64_t seed;
    bool stop_at_eos;     /* false: ignore_eos (eos suppressed by the SAMPLE hook's edits) */
} t_req_t;

static const t_req_t k_greedy_lp = {NSTEP, 2, -1, 0, 1, 0, false};

static eng_service_t *s_new(const char *model, const char *runner, uint32_t max_batch_tokens,
                            bool no_prefix_cache) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", s_shared(), model);
    setenv("OMNIPIPE_CUDA_RUNNER", runner, 1);
    eng_service_opts_t o = {.model_dir = dir, .backend = "cuda", .engine_id = "gpu-test",
                            .max_batch_tokens = max_batch_tokens, .kv_blocks = 1024,
                            .no_prefix_cache = no_prefix_cache};
    eng_service_t *s = NULL;
    char err[512] = "";
    int r = eng_service_new(&o, NULL, NULL, &s, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "eng_service_new(cuda %s, %s): %s\n", runner, model, err);
    assert_int_equal(r, 0);
    return s;
}

/* submits request `id`: the prompt ids with the sampling parameters sp */
static void s_submit_pr(eng_service_t *s, uint64_t id, const int32_t *ids, size_t n,
                        Omnipipe__SamplingParams *sp) {
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = id;
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = (int32_t *)ids;
    pr.n_ids = n;
    pr.sampling = sp;
    assert_int_equal(eng_service_submit(s, &h, &pr, 1), 0);
}

static void s_submit_ids(eng_service_t *s, uint64_t id, const int32_t *ids, size_t n,
                         const t_req_t *q) {
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_ignore_eos = true;
    sp.max_tokens = q->max_tokens;
    sp.ignore_eos = !q->stop_at_eos;
    if (q->logprobs) {
        sp.has_logprobs = true;
        sp.logprobs = q->logprobs;
    }
    if (q->temperature >= 0) {
        sp.has_temperature = sp.has_top_k = sp.has_top_p = sp.has_seed = true;
        sp.temperature = q->temperature;
        sp.top_k = q->top_k;
        sp.top_p = q->top_p;
        sp.seed = q->seed;
    }
    s_submit_pr(s, id, ids, n, &sp);
}

static size_t s_json_ids(json_t *arr, int32_t *ids, size_t cap) {
    size_t n = json_array_size(arr);
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return n;
}

/* Steps the service until it has no work; every SeqStep goes to on_seq (request ids < n). */
static void s_drain_each(eng_service_t *s, size_t n,
                         void (*on_seq)(const Omnipipe__SeqStep *st, void *ud), void *ud) {
    for (int guard = 0; eng_service_has_work(s); guard++) {
        assert_true(guard < 100000);
        const Omnipipe__TokenBatch *b = NULL;
        assert_int_equal(eng_service_step(s, 1, &b), 0);
        for (size_t i = 0; b && i < b->n_seqs; i++) {
            assert_true(b->seqs[i]->request_id < n);
            on_seq(b->seqs[i], ud);
        }
    }
}

static void s_on_run(const Omnipipe__SeqStep *st, void *ud) {
    t_run_t *r = &((t_run_t *)ud)[st->request_id];
    if (st->has_cached_tokens)
        r->cached = st->cached_tokens;
    for (size_t j = 0; j < st->n_token_ids && r->n < NSTEP; j++) {
        r->tokens[r->n] = st->token_ids[j];
        r->gap[r->n] = 0;
        if (j < st->n_logprobs && st->logprobs[j]->n_top >= 2)
            r->gap[r->n] = st->logprobs[j]->top[0]->logprob - st->logprobs[j]->top[1]->logprob;
        r->n++;
    }
    if (st->has_finish && st->finish) {
        r->finish = st->finish;
        assert_int_not_equal(st->finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    }
}

static void s_drain(eng_service_t *s, t_run_t *runs, size_t n_runs) {
    s_drain_each(s, n_runs, s_on_run, runs);
}

/* the fixture's golden.json (prompts, runs); the caller decrefs */
static json_t *s_golden(const char *model) {
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/%s/golden.json", s_shared(), model);
    json_t *g = json_load_file(path, 0, NULL);
    assert_non_null(g);
    return g;
}

/* first step where a and b differ (n if none) */
static uint32_t s_diverge(const int32_t *a, const int32_t *b, uint32_t n) {
    uint32_t j = 0;
    while (j < n && a[j] == b[j])
        j++;
    return j;
}

/* --- vtable runner: fp32 goldens ------------------------------------------------------------ */

static void s_check_vtable(const char *model) {
    json_t *g = s_golden(model);
    json_t *prompts = json_object_get(g, "prompts");
    json_t *runs = json_object_get(json_object_get(g, "runs"), "fp32");
    size_t n = json_array_size(prompts);
    assert_true(n <= MAXP);
    t_run_t alone[MAXP], batch[MAXP], chunk[MAXP];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    memset(chunk, 0, sizeof chunk);
    int32_t ids[MAXTOK];
    eng_service_t *s = s_new(model, "vtable", 0, false);
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
        s_drain(s, alone, n);
    }
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
    }
    s_drain(s, batch, n);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.kv_blocks_free, load.kv_blocks_total);
    eng_service_free(s);
    s = s_new(model, "vtable", 7, false);
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
    }
    s_drain(s, chunk, n);
    eng_service_free(s);

    for (size_t i = 0; i < n; i++) {
        assert_int_equal(alone[i].n, NSTEP);
        assert_int_equal(batch[i].n, NSTEP);
        assert_int_equal(chunk[i].n, NSTEP);
        int32_t gold[NSTEP];
        json_t *gt = json_object_get(json_array_get(runs, i), "tokens");
        json_t *topk = json_object_get(json_array_get(runs, i), "topk");
        for (uint32_t j = 0; j < NSTEP; j++)
            gold[j] = (int32_t)json_integer_value(json_array_get(gt, j));
        uint32_t dg = s_diverge(alone[i].tokens, gold, NSTEP);
        double ggap = 0;
        if (dg < NSTEP) {
            json_t *lg = json_array_get(json_array_get(topk, dg), 1);
            ggap = json_number_value(json_array_get(lg, 0)) - json_number_value(json_array_get(lg, 1));
        }
        uint32_t db = s_diverge(alone[i].tokens, batch[i].tokens, NSTEP);
        uint32_t dc = s_diverge(alone[i].tokens, chunk[i].tokens, NSTEP);
        printf("vtable %s prompt %zu: golden match %u/%d%s, batched == alone for %u, chunked for %u\n",
               model, i, dg, NSTEP, dg < NSTEP ? " (near-tie)" : "", db, dc);
        if (dg < NSTEP && ggap > TOL) {
            fprintf(stderr, "%s prompt %zu: step %u differs from golden with reference gap %.4f\n",
                    model, i, dg, ggap);
            fail();
        }
        if (db < NSTEP && alone[i].gap[db] > TOL) {
            fprintf(stderr, "%s prompt %zu: batched differs at step %u, gap %.4f\n", model, i, db,
                    (double)alone[i].gap[db]);
            fail();
        }
        if (dc < NSTEP && alone[i].gap[dc] > TOL) {
            fprintf(stderr, "%s prompt %zu: chunked differs at step %u, gap %.4f\n", model, i, dc,
                    (double)alone[i].gap[dc]);
            fail();
        }
    }
    json_decref(g);
}

/* --- fast runner ---------------------------------------------------------------------------- */

/* 1. teacher-forced vs the bf16 reference; returns the measured gap error */
static double s_fast_teacher_forced(const char *model, json_t *prompts, json_t *runs, size_t n) {
    eng_service_t *s = s_new(model, "fast", 0, false);
    static t_run_t tf[MAXP * NSTEP];
    memset(tf, 0, sizeof tf);
    static int32_t ids[MAXTOK];
    const t_req_t one = {1, 2, -1, 0, 1, 0, false};
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK - NSTEP);
        json_t *rt = json_object_get(json_array_get(runs, i), "tokens");
        for (uint32_t st = 0; st < NSTEP; st++) {
            if (st > 0)
                ids[k + st - 1] = (int32_t)json_integer_value(json_array_get(rt, st - 1));
            s_submit_ids(s, i * NSTEP + st, ids, k + st, &one);
        }
    }
    s_drain(s, tf, n * NSTEP);
    eng_service_free(s);
    double err = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *topk = json_object_get(json_array_get(runs, i), "topk");
        for (uint32_t st = 0; st < NSTEP; st++) {
            json_t *tl = json_array_get(json_array_get(topk, st), 1);
            double rg = json_number_value(json_array_get(tl, 0)) - json_number_value(json_array_get(tl, 1));
            assert_int_equal(tf[i * NSTEP + st].n, 1);
            double d = fabs((double)tf[i * NSTEP + st].gap[0] - rg);
            err = d > err ? d : err;
        }
    }
    int checked = 0, agree = 0, total = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *topk = json_object_get(json_array_get(runs, i), "topk");
        for (uint32_t st = 0; st < NSTEP; st++) {
            json_t *tk = json_array_get(topk, st);
            json_t *tl = json_array_get(tk, 1);
            int32_t ref = (int32_t)json_integer_value(json_array_get(json_array_get(tk, 0), 0));
            double rg = json_number_value(json_array_get(tl, 0)) - json_number_value(json_array_get(tl, 1));
            int32_t mine = tf[i * NSTEP + st].tokens[0];
            total++;
            agree += mine == ref;
            if (rg > err) {
                checked++;
                if (mine != ref) {
                    fprintf(stderr, "%s prompt %zu step %u: token %d, bf16 reference %d (gap %.4f > "
                            "error %.4f)\n", model, i, st, mine, ref, rg, err);
                    bad++;
                }
            }
        }
    }
    printf("fast %s: teacher-forced top-1 agrees %d/%d; %d steps with reference gap > measured "
           "error %.4f, %d differ\n", model, agree, total, checked, err, bad);
    assert_int_equal(bad, 0);
    assert_true(err < 0.25);
    assert_true(checked * 2 >= total);
    return err;
}

static void s_check_fast(const char *model) {
    json_t *g = s_golden(model);
    json_t *prompts = json_object_get(g, "prompts");
    json_t *runs = json_object_get(json_object_get(g, "runs"), "bf16");
    size_t n = json_array_size(prompts);
    assert_true(n <= MAXP && n >= 2);
    double err = s_fast_teacher_forced(model, prompts, runs, n);
    double tol = err > TOL ? err : TOL;

    /* 2. alone == batched == chunked */
    t_run_t alone[MAXP], batch[MAXP], chunk[MAXP];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    memset(chunk, 0, sizeof chunk);
    int32_t ids[MAXTOK];
    eng_service_t *s = s_new(model, "fast", 0, false);
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
        s_drain(s, alone, n);
    }
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
    }
    s_drain(s, batch, n);

    /* 3. second turn on this service (prefix cache warm) */
    size_t k0 = s_json_ids(json_array_get(prompts, 0), ids, MAXTOK - 2 * NSTEP);
    memcpy(ids + k0, alone[0].tokens, NSTEP * sizeof(int32_t));
    size_t k2 = k0 + NSTEP;
    for (size_t j = 0; j < 8; j++) /* the user's next message: some of prompt 1 */
        ids[k2++] = (int32_t)json_integer_value(json_array_get(json_array_get(prompts, 1), j));
    t_run_t turn2[1], turn2_cold[1];
    memset(turn2, 0, sizeof turn2);
    memset(turn2_cold, 0, sizeof turn2_cold);
    s_submit_ids(s, 0, ids, k2, &k_greedy_lp);
    s_drain(s, turn2, 1);

    /* 4. GPU sampling: greedy without logprobs; seeded sampling twice, alone and batched */
    t_run_t dev_greedy[1], samp_a[1], samp_a2[1], samp_b[MAXP], samp_c[1];
    memset(dev_greedy, 0, sizeof dev_greedy);
    memset(samp_a, 0, sizeof samp_a);
    memset(samp_a2, 0, sizeof samp_a2);
    memset(samp_b, 0, sizeof samp_b);
    memset(samp_c, 0, sizeof samp_c);
    /* no logprobs, no ignore_eos: rows without logit edits */
    const t_req_t greedy_dev = {NSTEP, 0, -1, 0, 1, 0, true};
    const t_req_t samp = {NSTEP, 0, 0.9f, 40, 0.9f, 7, true};
    const t_req_t samp_other = {NSTEP, 0, 0.9f, 40, 0.9f, 8, true};
    size_t kp = s_json_ids(json_array_get(prompts, 0), ids, MAXTOK);
    s_submit_ids(s, 0, ids, kp, &greedy_dev);
    s_drain(s, dev_greedy, 1);
    s_submit_ids(s, 0, ids, kp, &samp);
    s_drain(s, samp_a, 1);
    s_submit_ids(s, 0, ids, kp, &samp);
    s_drain(s, samp_a2, 1);
    for (size_t i = 0; i < n; i++) { /* request 0 the same, others keep the batch busy */
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, i == 0 ? &samp : &samp_other);
    }
    s_drain(s, samp_b, n);
    kp = s_json_ids(json_array_get(prompts, 0), ids, MAXTOK);
    s_submit_ids(s, 0, ids, kp, &samp_other);
    s_drain(s, samp_c, 1);
    eng_service_free(s);

    s = s_new(model, "fast", 7, false);
    for (size_t i = 0; i < n; i++) {
        size_t k = s_json_ids(json_array_get(prompts, i), ids, MAXTOK);
        s_submit_ids(s, i, ids, k, &k_greedy_lp);
    }
    s_drain(s, chunk, n);
    eng_service_free(s);

    /* the second turn without any prefix cache */
    s = s_new(model, "fast", 0, true);
    k0 = s_json_ids(json_array_get(prompts, 0), ids, MAXTOK - 2 * NSTEP);
    memcpy(ids + k0, alone[0].tokens, NSTEP * sizeof(int32_t));
    k2 = k0 + NSTEP;
    for (size_t j = 0; j < 8; j++)
        ids[k2++] = (int32_t)json_integer_value(json_array_get(json_array_get(prompts, 1), j));
    s_submit_ids(s, 0, ids, k2, &k_greedy_lp);
    s_drain(s, turn2_cold, 1);
    eng_service_free(s);

    for (size_t i = 0; i < n; i++) {
        assert_int_equal(alone[i].n, NSTEP);
        assert_int_equal(batch[i].n, NSTEP);
        assert_int_equal(chunk[i].n, NSTEP);
        uint32_t db = s_diverge(alone[i].tokens, batch[i].tokens, NSTEP);
        uint32_t dc = s_diverge(alone[i].tokens, chunk[i].tokens, NSTEP);
        printf("fast %s prompt %zu: batched == alone for %u/%d, chunked for %u\n", model, i, db,
               NSTEP, dc);
        if (db < NSTEP && alone[i].gap[db] > tol) {
            fprintf(stderr, "%s prompt %zu: batched differs at step %u, gap %.4f\n", model, i, db,
                    (double)alone[i].gap[db]);
            fail();
        }
        if (dc < NSTEP && alone[i].gap[dc] > tol) {
            fprintf(stderr, "%s prompt %zu: chunked differs at step %u, gap %.4f\n", model, i, dc,
                    (double)alone[i].gap[dc]);
            fail();
        }
    }
    uint32_t dt = s_diverge(turn2[0].tokens, turn2_cold[0].tokens, NSTEP);
    printf("fast %s: second turn (%zu tokens) reuses %u cached tokens; == without prefix cache for "
           "%u/%d\n", model, k2, turn2[0].cached, dt, NSTEP);
    assert_true(turn2[0].cached >= 16);
    assert_int_equal(turn2_cold[0].cached, 0);
    assert_int_equal(turn2[0].n, NSTEP);
    if (dt < NSTEP && turn2_cold[0].gap[dt] > tol) {
        fprintf(stderr, "%s: second turn with prefix cache differs at step %u, gap %.4f\n", model,
                dt, (double)turn2_cold[0].gap[dt]);
        fail();
    }
    /* these may stop at an eos: compare what both produced */
    uint32_t nd = dev_greedy[0].n;
    uint32_t dd = s_diverge(dev_greedy[0].tokens, alone[0].tokens, nd);
    printf("fast %s: GPU greedy == host greedy for %u/%u; seeded sampling (%u tokens) alone == "
           "batched: %s, other seed differs: %s\n", model, dd, nd, samp_a[0].n,
           samp_a[0].n == samp_b[0].n &&
                   memcmp(samp_a[0].tokens, samp_b[0].tokens, samp_a[0].n * sizeof(int32_t)) == 0
               ? "yes" : "no",
           samp_a[0].n != samp_c[0].n ||
                   memcmp(samp_a[0].tokens, samp_c[0].tokens, samp_a[0].n * sizeof(int32_t)) != 0
               ? "yes" : "no");
    assert_true(nd >= 1);
    if (dd < nd && alone[0].gap[dd] > tol) {
        fprintf(stderr, "%s: GPU greedy differs from host greedy at step %u, gap %.4f\n", model,
                dd, (double)alone[0].gap[dd]);
        fail();
    }
    /* same seed, same logits: the same tokens (batched, the logits move by bf16 rounding, so a
       draw at a CDF boundary may flip: reported above, not asserted) */
    assert_true(samp_a[0].n >= 1);
    assert_int_equal(samp_a[0].n, samp_a2[0].n);
    assert_memory_equal(samp_a[0].tokens, samp_a2[0].tokens, samp_a[0].n * sizeof(int32_t));
    /* another seed: a different sequence (length or tokens); 24 draws at temperature 0.9 over
       top-40 make a collision practically impossible unless the model is near-deterministic */
    if (samp_a[0].n >= 8)
        assert_true(samp_a[0].n != samp_c[0].n ||
                    memcmp(samp_a[0].tokens, samp_c[0].tokens, samp_a[0].n * sizeof(int32_t)) != 0);
    json_decref(g);
}

/* --- fused sampling (OMNIPIPE_SAMPLE_FUSED) ------------------------------------------------- */

/* one sampled request of the fused A/B check */
typedef struct t_samp {
    const char *name;
    float temperature;    /* 0: greedy */
    int32_t top_k;
    float top_p, min_p;
    float rep, presence, frequency;
    uint32_t logprobs;
    uint64_t seed;
    bool ignore_eos;
} t_samp_t;

/* what came back for one request: tokens, and per token the logprob and the top ids/logprobs */
typedef struct t_out {
    int32_t tokens[NSTEP];
    float lp[NSTEP];
    uint32_t n_top[NSTEP];
    int32_t top_ids[NSTEP][8];
    float top_lp[NSTEP][8];
    uint32_t n;
    int finish;
} t_out_t;

static void s_submit_samp(eng_service_t *s, uint64_t id, const int32_t *ids, size_t n,
                          const t_samp_t *q) {
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_ignore_eos = sp.has_temperature = sp.has_seed = true;
    sp.max_tokens = NSTEP;
    sp.ignore_eos = q->ignore_eos;
    sp.temperature = q->temperature;
    sp.seed = q->seed;
    if (q->top_k > 0) {
        sp.has_top_k = true;
        sp.top_k = q->top_k;
    }
    if (q->top_p < 1.0f) {
        sp.has_top_p = true;
        sp.top_p = q->top_p;
    }
    if (q->min_p > 0.0f) {
        sp.has_min_p = true;
        sp.min_p = q->min_p;
    }
    if (q->rep != 1.0f || q->presence != 0.0f || q->frequency != 0.0f) {
        sp.has_repetition_penalty = sp.has_presence_penalty = sp.has_frequency_penalty = true;
        sp.repetition_penalty = q->rep;
        sp.presence_penalty = q->presence;
        sp.frequency_penalty = q->frequency;
    }
    if (q->logprobs) {
        sp.has_logprobs = true;
        sp.logprobs = q->logprobs;
    }
    s_submit_pr(s, id, ids, n, &sp);
}

static void s_on_out(const Omnipipe__SeqStep *st, void *ud) {
    t_out_t *o = &((t_out_t *)ud)[st->request_id];
    for (size_t j = 0; j < st->n_token_ids && o->n < NSTEP; j++) {
        o->tokens[o->n] = st->token_ids[j];
        if (j < st->n_logprobs) {
            const Omnipipe__TokenLogprobs *l = st->logprobs[j];
            o->lp[o->n] = l->logprob;
            o->n_top[o->n] = l->n_top < 8 ? (uint32_t)l->n_top : 8;
            for (uint32_t k = 0; k < o->n_top[o->n]; k++) {
                o->top_ids[o->n][k] = l->top[k]->token_id;
                o->top_lp[o->n][k] = l->top[k]->logprob;
            }
        }
        o->n++;
    }
    if (st->has_finish && st->finish) {
        o->finish = st->finish;
        assert_int_not_equal(st->finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    }
}

static void s_drain_out(eng_service_t *s, t_out_t *outs, size_t n_outs) {
    s_drain_each(s, n_outs, s_on_out, outs);
}

/* runs the cases on a fresh fast-runner service with OMNIPIPE_SAMPLE_FUSED=fused: batch 1 (each
 * case alone on prompt 0) into one[], then the cases together, four at a time, request i on
 * prompt i % n_prompts, into four[] */
static void s_run_fused(const char *model, json_t *prompts, const t_samp_t *cases, size_t n_cases,
                        int fused, int sparse, t_out_t *one, t_out_t *four) {
    setenv("OMNIPIPE_SAMPLE_FUSED", fused ? "1" : "0", 1);
    setenv("OM_CUDA_SAMPLE_SPARSE", sparse ? "1" : "0", 1);
    eng_service_t *s = s_new(model, "fast", 0, false);
    int32_t ids[MAXTOK];
    const size_t np = json_array_size(prompts);
    memset(one, 0, n_cases * sizeof *one);
    memset(four, 0, n_cases * sizeof *four);
    for (size_t c = 0; c < n_cases; c++) {
        size_t k = s_json_ids(json_array_get(prompts, 0), ids, MAXTOK);
        s_submit_samp(s, 0, ids, k, &cases[c]);
        s_drain_out(s, &one[c], 1);
    }
    for (size_t c0 = 0; c0 < n_cases; c0 += 4) {
        size_t nb = n_cases - c0 < 4 ? n_cases - c0 : 4;
        for (size_t i = 0; i < nb; i++) {
            size_t k = s_json_ids(json_array_get(prompts, (c0 + i) % np), ids, MAXTOK);
            s_submit_samp(s, i, ids, k, &cases[c0 + i]);
        }
        s_drain_out(s, &four[c0], nb);
    }
    eng_service_free(s);
    unsetenv("OMNIPIPE_SAMPLE_FUSED");
    unsetenv("OM_CUDA_SAMPLE_SPARSE");
}

/* differing entries (tokens, logprobs and top logprobs compared bit for bit); *ret_lp counts the
 * logprob values compared */
static uint32_t s_out_diff(const t_out_t *a, const t_out_t *b, uint32_t *ret_lp) {
    uint32_t d = a->n != b->n || a->finish != b->finish;
    uint32_t n = a->n < b->n ? a->n : b->n;
    for (uint32_t j = 0; j < n; j++) {
        d += a->tokens[j] != b->tokens[j];
        d += memcmp(&a->lp[j], &b->lp[j], sizeof(float)) != 0;
        d += a->n_top[j] != b->n_top[j];
        *ret_lp += 1 + a->n_top[j];
        for (uint32_t k = 0; k < a->n_top[j] && k < b->n_top[j]; k++) {
            d += a->top_ids[j][k] != b->top_ids[j][k];
            d += memcmp(&a->top_lp[j][k], &b->top_lp[j][k], sizeof(float)) != 0;
        }
    }
    return d;
}

/* The fused step (OMNIPIPE_SAMPLE_FUSED=1, the default: the forward left in flight, the draw queued
 * behind it on the runner's stream, rows + edits in one upload) against the old synchronised step
 * (=0): the same sampled requests give the same tokens and logprobs, bit for bit, alone and four
 * at a time. One line per case and batch. */
static void s_check_fused(const char *model) {
    json_t *g = s_golden(model);
    json_t *prompts = json_object_get(g, "prompts");
    assert_true(json_array_size(prompts) >= 1);
    static const t_samp_t cases[] = {
        {"top-p 0.9, T 0.8, seed 1", 0.8f, 0, 0.9f, 0, 1, 0, 0, 0, 1, true},
        {"top-p 0.9, T 0.8, seed 2", 0.8f, 0, 0.9f, 0, 1, 0, 0, 0, 2, true},
        {"top-k 20 + top-p 0.95, T 1.0, seed 3", 1.0f, 20, 0.95f, 0, 1, 0, 0, 0, 3, true},
        {"top-k 5, T 0.7, seed 4", 0.7f, 5, 1.0f, 0, 1, 0, 0, 0, 4, false},
        {"top-p 0.95 + rep 1.1 + presence 0.5 + frequency 0.3, seed 5", 0.8f, 0, 0.95f, 0, 1.1f,
         0.5f, 0.3f, 0, 5, false},
        {"top-p 0.95 + logprobs 5, seed 6", 0.8f, 0, 0.95f, 0, 1, 0, 0, 5, 6, false},
        {"temperature 1.3 (no truncation) + logprobs 2, seed 7", 1.3f, 0, 1.0f, 0, 1, 0, 0, 2, 7,
         false},
        {"min-p 0.05 + penalties + logprobs 3, seed 8", 0.9f, 0, 1.0f, 0.05f, 1.05f, 0.2f, 0.1f, 3,
         8, true},
        {"greedy + logprobs 4 + ignore_eos", 0.0f, 0, 1.0f, 0, 1, 0, 0, 4, 0, false},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    static t_out_t one_f[NC], four_f[NC], one_u[NC], four_u[NC], one_o[NC], four_o[NC];
    s_run_fused(model, prompts, cases, NC, 1, 1, one_f, four_f); /* the defaults */
    s_run_fused(model, prompts, cases, NC, 0, 1, one_u, four_u);
    s_run_fused(model, prompts, cases, NC, 0, 0, one_o, four_o); /* the path before both */
    uint32_t bad = 0;
    for (int b = 0; b < 2; b++)
        for (size_t c = 0; c < NC; c++) {
            const t_out_t *f = b ? &four_f[c] : &one_f[c], *u = b ? &four_u[c] : &one_u[c],
                          *o = b ? &four_o[c] : &one_o[c];
            uint32_t n_lp = 0, d = s_out_diff(f, u, &n_lp), n_lp2 = 0, d2 = s_out_diff(f, o, &n_lp2);
            const int ok = d == 0 && d2 == 0 && f->n >= 1;
            printf("fused sampling %s batch %d, %s: %u tokens, %u logprobs; differ from "
                   "OMNIPIPE_SAMPLE_FUSED=0: %u, from that + OM_CUDA_SAMPLE_SPARSE=0: %u (bound 0): "
                   "%s\n",
                   model, b ? 4 : 1, cases[c].name, f->n, n_lp, d, d2, ok ? "PASS" : "FAIL");
            bad += !ok;
        }
    fflush(stdout);
    json_decref(g);
    assert_int_equal(bad, 0);
}

static void test_fused_qwen3_moe(void **state) {
    (void)state;
    s_check_fused("tiny-qwen3-moe");
}
static void test_fused_omni(void **state) {
    (void)state;
    s_check_fused("tiny-omni");
}

static void test_vtable_qwen3(void **state) {
    (void)state;
    s_check_vtable("tiny-qwen3");
}
static void test_vtable_qwen3_moe(void **state) {
    (void)state;
    s_check_vtable("tiny-qwen3-moe");
}
static void test_vtable_omni(void **state) {
    (void)state;
    s_check_vtable("tiny-omni");
}
static void test_fast_qwen3(void **state) {
    (void)state;
    s_check_fast("tiny-qwen3");
}
static void test_fast_qwen3_moe(void **state) {
    (void)state;
    s_check_fast("tiny-qwen3-moe");
}
static void test_fast_omni(void **state) {
    (void)state;
    s_check_fast("tiny-omni");
}

int main(void) {
    eng_backend_t *probe = NULL;
    if (eng_backend_new("cuda", 0, 0, &probe) < 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    eng_backend_free(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vtable_qwen3), cmocka_unit_test(test_vtable_qwen3_moe),
        cmocka_unit_test(test_vtable_omni),  cmocka_unit_test(test_fast_qwen3),
        cmocka_unit_test(test_fast_qwen3_moe), cmocka_unit_test(test_fast_omni),
        cmocka_unit_test(test_fused_qwen3_moe), cmocka_unit_test(test_fused_omni),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

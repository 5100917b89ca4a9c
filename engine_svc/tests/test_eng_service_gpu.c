/* test_eng_service_gpu.c (label gpu): eng_service on the CUDA backend with the tiny fixtures. The
 * golden prompts run alone and all in one batch (and under a small token budget, chunked) and are
 * compared with transformers' fp32 greedy tokens (runs.fp32[i].tokens). A GPU computes in another
 * order than the CPU, so where two runs part, the step must be a near-tie: the reference's top-2
 * logit gap (golden topk) or our own (logprobs of the raw logits) must be within TOL. Prints the
 * tokens matched before any divergence. Skipped without a CUDA device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_service.h"

#define TOL 0.05 /* logits */

/* fixtures root: $OM_SHARED_DIR (the device machine's copy) or the configured path */
static const char *s_shared(void) {
    const char *e = getenv("OM_SHARED_DIR");
    return e && *e ? e : OM_SHARED_DIR;
}
#define NSTEP 24

typedef struct t_run {
    int32_t tokens[NSTEP];
    float gap[NSTEP]; /* top1 - top2 raw logprob at each step */
    uint32_t n;
    int finish;
} t_run_t;

static eng_service_t *s_new(const char *model, uint32_t max_batch_tokens) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", s_shared(), model);
    eng_service_opts_t o = {.model_dir = dir, .backend = "cuda", .engine_id = "gpu-test",
                            .max_batch_tokens = max_batch_tokens, .kv_blocks = 1024};
    eng_service_t *s = NULL;
    char err[512] = "";
    int r = eng_service_new(&o, NULL, NULL, &s, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "eng_service_new(cuda, %s): %s (skipping)\n", model, err);
        return NULL;
    }
    return s;
}

static void s_submit(eng_service_t *s, uint64_t id, json_t *prompt) {
    int32_t ids[256];
    size_t n = json_array_size(prompt);
    assert_true(n <= 256);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = id;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_ignore_eos = sp.has_logprobs = true;
    sp.max_tokens = NSTEP;
    sp.ignore_eos = true;
    sp.logprobs = 2;
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = ids;
    pr.n_ids = n;
    pr.sampling = &sp;
    assert_int_equal(eng_service_submit(s, &h, &pr, 1), 0);
}

static void s_drain(eng_service_t *s, t_run_t *runs, size_t n_runs) {
    for (int guard = 0; eng_service_has_work(s); guard++) {
        assert_true(guard < 10000);
        const Omnipipe__TokenBatch *b = NULL;
        assert_int_equal(eng_service_step(s, 1, &b), 0);
        for (size_t i = 0; b && i < b->n_seqs; i++) {
            const Omnipipe__SeqStep *st = b->seqs[i];
            assert_true(st->request_id < n_runs);
            t_run_t *r = &runs[st->request_id];
            for (size_t j = 0; j < st->n_token_ids && r->n < NSTEP; j++) {
                r->tokens[r->n] = st->token_ids[j];
                r->gap[r->n] = 0;
                if (j < st->n_logprobs && st->logprobs[j]->n_top >= 2)
                    r->gap[r->n] = st->logprobs[j]->top[0]->logprob - st->logprobs[j]->top[1]->logprob;
                r->n++;
            }
            if (st->has_finish && st->finish)
                r->finish = st->finish;
        }
    }
}

/* first step where a and b differ (NSTEP if none) */
static uint32_t s_diverge(const int32_t *a, const int32_t *b) {
    uint32_t j = 0;
    while (j < NSTEP && a[j] == b[j])
        j++;
    return j;
}

static void s_check_model(const char *model) {
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/%s/golden.json", s_shared(), model);
    json_t *g = json_load_file(path, 0, NULL);
    assert_non_null(g);
    json_t *prompts = json_object_get(g, "prompts");
    json_t *runs = json_object_get(json_object_get(g, "runs"), "fp32");
    size_t n = json_array_size(prompts);
    assert_true(n <= 8);
    t_run_t alone[8], batch[8], chunk[8];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    memset(chunk, 0, sizeof chunk);
    eng_service_t *s = s_new(model, 0);
    if (!s) {
        json_decref(g);
        skip();
    }
    for (size_t i = 0; i < n; i++) {
        s_submit(s, i, json_array_get(prompts, i));
        s_drain(s, alone, n);
    }
    for (size_t i = 0; i < n; i++)
        s_submit(s, i, json_array_get(prompts, i));
    s_drain(s, batch, n);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.kv_blocks_free, load.kv_blocks_total);
    eng_service_free(s);
    s = s_new(model, 7);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        s_submit(s, i, json_array_get(prompts, i));
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
        uint32_t dg = s_diverge(alone[i].tokens, gold);
        double ggap = 0;
        if (dg < NSTEP) {
            json_t *lg = json_array_get(json_array_get(topk, dg), 1);
            ggap = json_number_value(json_array_get(lg, 0)) - json_number_value(json_array_get(lg, 1));
        }
        uint32_t db = s_diverge(alone[i].tokens, batch[i].tokens);
        uint32_t dc = s_diverge(alone[i].tokens, chunk[i].tokens);
        printf("%s prompt %zu: golden match %u/%d%s, batched == alone for %u, chunked for %u\n", model,
               i, dg, NSTEP, dg < NSTEP ? " (near-tie)" : "", db, dc);
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

static void test_gpu_qwen3(void **state) {
    (void)state;
    s_check_model("tiny-qwen3");
}
static void test_gpu_qwen3_moe(void **state) {
    (void)state;
    s_check_model("tiny-qwen3-moe");
}
static void test_gpu_omni(void **state) {
    (void)state;
    s_check_model("tiny-omni");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_qwen3),
        cmocka_unit_test(test_gpu_qwen3_moe),
        cmocka_unit_test(test_gpu_omni),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

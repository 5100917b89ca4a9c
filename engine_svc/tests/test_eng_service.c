/* test_eng_service.c: eng_service on the CPU backend with the tiny fixture models
 * (OM_SHARED_DIR/fixtures/tiny-*): the golden prompts run alone and all in one batch give the same
 * tokens as transformers (runs.fp32[i].tokens, 24 greedy tokens with eos suppressed), also under a
 * small token budget (chunked prefill); abort frees the blocks; a second conversation turn reuses
 * the first turn's KV (cached_tokens) and gives the tokens of an uncached run; admission waits for
 * KV memory or fails RESOURCE_EXHAUSTED at the deadline; bad sampling fields are reported in a
 * SeqStep; seeded sampling does not depend on the batch; explicit default (text) positions keep the
 * prefix cache, media-like positions bypass it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_service.h"
#include "om_err.h"

#define MAX_REQ 16
#define MAX_TOK 512

typedef struct t_out {
    int32_t tokens[MAX_TOK];
    uint32_t n;
    int finish;               /* Omnipipe__FinishReason, 0 = none yet */
    uint32_t cached, prompt_tokens;
    bool got_first;
    int code;                 /* Status code if error */
    bool retryable;
    char msg[256];
    char stage[32];
} t_out_t;

typedef struct t_golden {
    int32_t prompts[8][128];
    uint32_t n_prompt[8];
    int32_t tokens[8][24];
    uint32_t n;
} t_golden_t;

static void s_load_golden(const char *model, t_golden_t *g) {
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/%s/golden.json", OM_SHARED_DIR, model);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fprintf(stderr, "%s: %s\n", path, jerr.text);
    assert_non_null(root);
    json_t *prompts = json_object_get(root, "prompts");
    json_t *runs = json_object_get(json_object_get(root, "runs"), "fp32");
    memset(g, 0, sizeof *g);
    g->n = (uint32_t)json_array_size(prompts);
    assert_true(g->n > 0 && g->n <= 8);
    for (uint32_t i = 0; i < g->n; i++) {
        json_t *p = json_array_get(prompts, i);
        g->n_prompt[i] = (uint32_t)json_array_size(p);
        assert_true(g->n_prompt[i] <= 128);
        for (uint32_t j = 0; j < g->n_prompt[i]; j++)
            g->prompts[i][j] = (int32_t)json_integer_value(json_array_get(p, j));
        json_t *t = json_object_get(json_array_get(runs, i), "tokens");
        assert_int_equal(json_array_size(t), 24);
        for (uint32_t j = 0; j < 24; j++)
            g->tokens[i][j] = (int32_t)json_integer_value(json_array_get(t, j));
    }
    json_decref(root);
}

static eng_service_t *s_new(const char *model, uint32_t max_batch_tokens, uint64_t kv_blocks,
                            bool no_prefix_cache) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", OM_SHARED_DIR, model);
    eng_service_opts_t o = {
        .model_dir = dir,
        .backend = "cpu",
        .load_format = "auto",
        .engine_id = "test",
        .max_batch_tokens = max_batch_tokens,
        .block_size = 4,
        .kv_blocks = kv_blocks,
        .no_prefix_cache = no_prefix_cache,
        .n_threads = 1,
    };
    eng_service_t *s = NULL;
    char err[512] = "";
    int r = eng_service_new(&o, NULL, NULL, &s, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "eng_service_new(%s): %s\n", model, err);
    assert_int_equal(r, 0);
    return s;
}

typedef struct t_req {
    const int32_t *ids;
    uint32_t n_ids;
    uint32_t max_tokens;
    bool ignore_eos;
    float temperature;        /* < 0: unset */
    uint64_t seed;
    float top_p;              /* 0: unset */
    uint64_t deadline_ms;
} t_req_t;

static void s_submit(eng_service_t *s, uint64_t id, const t_req_t *r, uint64_t now_ms) {
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = id;
    h.has_client_id = true;
    h.client_id.data = (uint8_t *)"cli";
    h.client_id.len = 3;
    h.has_deadline_unix_ms = r->deadline_ms != 0;
    h.deadline_unix_ms = r->deadline_ms;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = true;
    sp.max_tokens = r->max_tokens;
    sp.has_ignore_eos = true;
    sp.ignore_eos = r->ignore_eos;
    if (r->temperature >= 0) {
        sp.has_temperature = true;
        sp.temperature = r->temperature;
    }
    if (r->top_p != 0) {
        sp.has_top_p = true;
        sp.top_p = r->top_p;
    }
    sp.has_seed = true;
    sp.seed = r->seed;
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = (int32_t *)r->ids;
    pr.n_ids = r->n_ids;
    pr.sampling = &sp;
    assert_int_equal(eng_service_submit(s, &h, &pr, now_ms), 0);
}

static void s_collect(const Omnipipe__TokenBatch *b, t_out_t *out) {
    if (!b)
        return;
    for (size_t i = 0; i < b->n_seqs; i++) {
        const Omnipipe__SeqStep *st = b->seqs[i];
        assert_true(st->has_request_id && st->request_id < MAX_REQ);
        t_out_t *o = &out[st->request_id];
        assert_int_equal(o->finish, 0); /* nothing after the last step */
        if (!o->got_first) {
            assert_true(st->has_prompt_tokens);
            assert_non_null(st->header);
            o->got_first = true;
            o->cached = st->cached_tokens;
            o->prompt_tokens = st->prompt_tokens;
        }
        for (size_t j = 0; j < st->n_token_ids; j++) {
            assert_true(o->n < MAX_TOK);
            o->tokens[o->n++] = st->token_ids[j];
        }
        assert_int_equal(st->completion_tokens, o->n);
        if (st->has_finish && st->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE) {
            o->finish = st->finish;
            if (st->error) {
                o->code = st->error->code;
                o->retryable = st->error->retryable;
                snprintf(o->msg, sizeof o->msg, "%s", st->error->message ? st->error->message : "");
                snprintf(o->stage, sizeof o->stage, "%s", st->error->stage ? st->error->stage : "");
            }
        }
    }
}

static void s_drain(eng_service_t *s, t_out_t *out, uint64_t now_ms) {
    for (int guard = 0; eng_service_has_work(s); guard++) {
        assert_true(guard < 10000);
        const Omnipipe__TokenBatch *b = NULL;
        assert_int_equal(eng_service_step(s, now_ms, &b), 0);
        s_collect(b, out);
    }
}

static void s_check_golden_model(const char *model) {
    t_golden_t g;
    s_load_golden(model, &g);
    static t_out_t alone[MAX_REQ], batch[MAX_REQ], chunked[MAX_REQ];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    memset(chunked, 0, sizeof chunked);
    eng_service_t *s = s_new(model, 0, 512, true);
    for (uint32_t i = 0; i < g.n; i++) { /* alone */
        t_req_t r = {.ids = g.prompts[i], .n_ids = g.n_prompt[i], .max_tokens = 24,
                     .ignore_eos = true, .temperature = -1};
        s_submit(s, i, &r, 1000);
        s_drain(s, alone, 1000);
    }
    for (uint32_t i = 0; i < g.n; i++) { /* one batch */
        t_req_t r = {.ids = g.prompts[i], .n_ids = g.n_prompt[i], .max_tokens = 24,
                     .ignore_eos = true, .temperature = -1};
        s_submit(s, i, &r, 1000);
    }
    s_drain(s, batch, 1000);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.kv_blocks_free, load.kv_blocks_total); /* nothing leaked */
    assert_int_equal(load.running + load.waiting, 0);
    eng_service_free(s);
    /* chunked prefill: 5 tokens per step, prefix cache on */
    s = s_new(model, 5, 512, false);
    for (uint32_t i = 0; i < g.n; i++) {
        t_req_t r = {.ids = g.prompts[i], .n_ids = g.n_prompt[i], .max_tokens = 24,
                     .ignore_eos = true, .temperature = -1};
        s_submit(s, i, &r, 1000);
    }
    s_drain(s, chunked, 1000);
    eng_service_free(s);
    for (uint32_t i = 0; i < g.n; i++) {
        assert_int_equal(alone[i].finish, OMNIPIPE__FINISH_REASON__FINISH_LENGTH);
        assert_int_equal(alone[i].n, 24);
        assert_int_equal(batch[i].n, 24);
        assert_int_equal(chunked[i].n, 24);
        assert_int_equal(alone[i].prompt_tokens, g.n_prompt[i]);
        for (uint32_t j = 0; j < 24; j++) {
            if (alone[i].tokens[j] != g.tokens[i][j] || batch[i].tokens[j] != g.tokens[i][j] ||
                chunked[i].tokens[j] != g.tokens[i][j]) {
                fprintf(stderr, "%s prompt %u token %u: alone %d batch %d chunked %d golden %d\n", model,
                        i, j, alone[i].tokens[j], batch[i].tokens[j], chunked[i].tokens[j],
                        g.tokens[i][j]);
                fail();
            }
        }
    }
}

static void test_golden_qwen3(void **state) {
    (void)state;
    s_check_golden_model("tiny-qwen3");
}
static void test_golden_qwen3_moe(void **state) {
    (void)state;
    s_check_golden_model("tiny-qwen3-moe");
}
static void test_golden_omni(void **state) {
    (void)state;
    s_check_golden_model("tiny-omni");
}

static void test_abort(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-qwen3", &g);
    eng_service_t *s = s_new("tiny-qwen3", 0, 256, false);
    static t_out_t out[MAX_REQ];
    memset(out, 0, sizeof out);
    t_req_t r = {.ids = g.prompts[0], .n_ids = g.n_prompt[0], .max_tokens = 100, .ignore_eos = true,
                 .temperature = -1};
    s_submit(s, 0, &r, 1000);
    s_submit(s, 1, &r, 1000);
    for (int i = 0; i < 3; i++) {
        const Omnipipe__TokenBatch *b = NULL;
        assert_int_equal(eng_service_step(s, 1000, &b), 0);
        s_collect(b, out);
    }
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.running, 2);
    assert_true(load.kv_blocks_free < load.kv_blocks_total);
    assert_int_equal(eng_service_abort(s, (const uint8_t *)"cli", 3, 0), 0);
    assert_int_equal(eng_service_abort(s, (const uint8_t *)"cli", 3, 0), -ENOENT);
    assert_int_equal(eng_service_abort(s, (const uint8_t *)"xyz", 3, 1), -ENOENT);
    assert_int_equal(eng_service_abort(s, (const uint8_t *)"cli", 3, 1), 0);
    const Omnipipe__TokenBatch *b = NULL;
    assert_int_equal(eng_service_step(s, 1000, &b), 0);
    s_collect(b, out);
    assert_int_equal(out[0].finish, OMNIPIPE__FINISH_REASON__FINISH_ABORT);
    assert_int_equal(out[1].finish, OMNIPIPE__FINISH_REASON__FINISH_ABORT);
    assert_int_equal(out[0].n, 3);
    eng_service_load(s, &load);
    assert_int_equal(load.running + load.waiting, 0);
    assert_int_equal(load.kv_blocks_free, load.kv_blocks_total);
    assert_false(eng_service_has_work(s));
    eng_service_free(s);
}

static void test_second_turn(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-omni", &g); /* prompt 1 is a rendered chat conversation */
    const uint32_t bs = 4;
    static t_out_t t1[MAX_REQ], t2[MAX_REQ], ref[MAX_REQ];
    memset(t1, 0, sizeof t1);
    memset(t2, 0, sizeof t2);
    memset(ref, 0, sizeof ref);
    eng_service_t *s = s_new("tiny-omni", 0, 256, false);
    t_req_t r = {.ids = g.prompts[1], .n_ids = g.n_prompt[1], .max_tokens = 10, .ignore_eos = true,
                 .temperature = -1};
    s_submit(s, 0, &r, 1000);
    s_drain(s, t1, 1000);
    assert_int_equal(t1[0].n, 10);
    assert_int_equal(t1[0].cached, 0);
    /* turn 2: whole history (prompt + reply) + new text (ids of prompt 0's tail) */
    int32_t p2[256];
    uint32_t n2 = 0;
    memcpy(p2, g.prompts[1], g.n_prompt[1] * sizeof *p2);
    n2 = g.n_prompt[1];
    memcpy(p2 + n2, t1[0].tokens, 10 * sizeof *p2);
    n2 += 10;
    memcpy(p2 + n2, g.prompts[0], g.n_prompt[0] * sizeof *p2);
    n2 += g.n_prompt[0];
    t_req_t r2 = {.ids = p2, .n_ids = n2, .max_tokens = 12, .ignore_eos = true, .temperature = -1};
    s_submit(s, 1, &r2, 1000);
    s_drain(s, t2, 1000);
    assert_true(t2[1].cached >= g.n_prompt[1] / bs * bs);
    assert_true(t2[1].cached % bs == 0 && t2[1].cached < n2);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.prefix_cache_hits, t2[1].cached);
    assert_int_equal(load.prefix_cache_queries, g.n_prompt[1] + n2);
    eng_service_free(s);
    /* the same prompt without the cache */
    s = s_new("tiny-omni", 0, 256, true);
    s_submit(s, 1, &r2, 1000);
    s_drain(s, ref, 1000);
    assert_int_equal(ref[1].cached, 0);
    assert_int_equal(ref[1].n, 12);
    assert_int_equal(t2[1].n, 12);
    assert_memory_equal(ref[1].tokens, t2[1].tokens, 12 * sizeof(int32_t));
    eng_service_free(s);
}

static void test_admission(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-qwen3", &g);
    /* 14 blocks of 4 = 56 slots: one request of 32 + 24 tokens at a time (a second prompt of 8
     * blocks does not fit next to the first) */
    eng_service_t *s = s_new("tiny-qwen3", 0, 14, true);
    static t_out_t out[MAX_REQ];
    memset(out, 0, sizeof out);
    for (uint32_t i = 0; i < 3; i++) {
        t_req_t r = {.ids = g.prompts[0], .n_ids = g.n_prompt[0], .max_tokens = 24, .ignore_eos = true,
                     .temperature = -1};
        s_submit(s, i, &r, 1000);
    }
    bool saw_waiting = false;
    for (int guard = 0; eng_service_has_work(s); guard++) {
        assert_true(guard < 1000);
        const Omnipipe__TokenBatch *b = NULL;
        assert_int_equal(eng_service_step(s, 1000, &b), 0);
        s_collect(b, out);
        Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
        eng_service_load(s, &load);
        saw_waiting = saw_waiting || load.waiting > 0;
    }
    assert_true(saw_waiting);
    for (uint32_t i = 0; i < 3; i++) { /* all waited, then succeeded, with the golden tokens */
        assert_int_equal(out[i].finish, OMNIPIPE__FINISH_REASON__FINISH_LENGTH);
        assert_memory_equal(out[i].tokens, g.tokens[0], 24 * sizeof(int32_t));
    }
    /* deadline: the second request cannot get memory before its deadline */
    memset(out, 0, sizeof out);
    t_req_t r = {.ids = g.prompts[0], .n_ids = g.n_prompt[0], .max_tokens = 24, .ignore_eos = true,
                 .temperature = -1, .deadline_ms = 5000};
    s_submit(s, 0, &r, 1000);
    s_submit(s, 1, &r, 1000);
    uint64_t now = 1000;
    for (int guard = 0; eng_service_has_work(s); guard++) {
        assert_true(guard < 1000);
        const Omnipipe__TokenBatch *b = NULL;
        now = guard < 3 ? 1000 : 6000; /* time passes after three steps */
        assert_int_equal(eng_service_step(s, now, &b), 0);
        s_collect(b, out);
    }
    assert_int_equal(out[1].finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    assert_int_equal(out[1].code, OMNIPIPE__CODE__RESOURCE_EXHAUSTED);
    assert_true(out[1].retryable);
    assert_string_equal(out[1].stage, "engine");
    assert_int_equal(out[1].n, 0);
    /* the running one passed its deadline too: DEADLINE_EXCEEDED */
    assert_int_equal(out[0].finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    assert_int_equal(out[0].code, OMNIPIPE__CODE__DEADLINE_EXCEEDED);
    assert_true(out[0].n > 0 && out[0].n < 24);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(s, &load);
    assert_int_equal(load.kv_blocks_free, load.kv_blocks_total);
    eng_service_free(s);
}

static void test_bad_request(void **state) {
    (void)state;
    eng_service_t *s = s_new("tiny-qwen3", 0, 64, false);
    static t_out_t out[MAX_REQ];
    memset(out, 0, sizeof out);
    const int32_t ids[3] = {1, 2, 3}, bad_ids[2] = {5, 6007};
    t_req_t r = {.ids = ids, .n_ids = 3, .max_tokens = 4, .temperature = 0.5f, .top_p = 1.5f};
    s_submit(s, 0, &r, 1000);
    t_req_t r2 = {.ids = bad_ids, .n_ids = 2, .max_tokens = 4, .temperature = -1};
    s_submit(s, 1, &r2, 1000);
    t_req_t r3 = {.ids = ids, .n_ids = 3, .max_tokens = 4, .temperature = -1};
    s_submit(s, 2, &r3, 1000);
    s_drain(s, out, 1000);
    assert_int_equal(out[0].finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    assert_int_equal(out[0].code, OMNIPIPE__CODE__INVALID_ARGUMENT);
    assert_string_equal(out[0].stage, "engine");
    assert_string_equal(out[0].msg, "sampling.top_p: must be in (0, 1], got 1.5");
    assert_false(out[0].retryable);
    assert_int_equal(out[1].code, OMNIPIPE__CODE__INVALID_ARGUMENT);
    assert_string_equal(out[1].msg, "ids[1]: token id 6007 out of range [0, 6007)");
    assert_int_equal(out[2].finish, OMNIPIPE__FINISH_REASON__FINISH_LENGTH); /* the good one runs */
    assert_int_equal(out[2].n, 4);
    eng_service_free(s);
}

static void test_seeded_batch_independent(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-qwen3-moe", &g);
    static t_out_t alone[MAX_REQ], batch[MAX_REQ];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    eng_service_t *s = s_new("tiny-qwen3-moe", 0, 512, false);
    for (uint32_t i = 0; i < 3; i++) {
        t_req_t r = {.ids = g.prompts[i], .n_ids = g.n_prompt[i], .max_tokens = 16, .ignore_eos = true,
                     .temperature = 1.0f, .top_p = 0.9f, .seed = 1234 + i};
        s_submit(s, i, &r, 1000);
        s_drain(s, alone, 1000);
    }
    for (uint32_t i = 0; i < 3; i++) {
        t_req_t r = {.ids = g.prompts[i], .n_ids = g.n_prompt[i], .max_tokens = 16, .ignore_eos = true,
                     .temperature = 1.0f, .top_p = 0.9f, .seed = 1234 + i};
        s_submit(s, i, &r, 1000);
    }
    s_drain(s, batch, 1000);
    for (uint32_t i = 0; i < 3; i++) {
        assert_int_equal(alone[i].n, 16);
        assert_memory_equal(alone[i].tokens, batch[i].tokens, 16 * sizeof(int32_t));
    }
    /* sampling did not collapse to greedy */
    assert_memory_not_equal(alone[0].tokens, g.tokens[0], 16 * sizeof(int32_t));
    eng_service_free(s);
}

/* explicit M-RoPE positions (text-only: all rows 0..n-1) give the same tokens; a bad shape is an
 * INVALID_ARGUMENT naming the field */
static void test_positions(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-omni", &g);
    eng_service_t *s = s_new("tiny-omni", 7, 256, false);
    static t_out_t out[MAX_REQ];
    memset(out, 0, sizeof out);
    for (uint32_t k = 0; k < 2; k++) {
        const uint32_t n = g.n_prompt[0];
        int32_t pos[3 * 128];
        for (uint32_t r = 0; r < 3; r++)
            for (uint32_t i = 0; i < n; i++)
                pos[r * n + i] = (int32_t)i;
        int64_t shape[2] = {3, k == 0 ? (int64_t)n : (int64_t)n - 1};
        Omnipipe__Tensor t = OMNIPIPE__TENSOR__INIT;
        t.has_dtype = true;
        t.dtype = OMNIPIPE__TENSOR__DTYPE__I32;
        t.n_shape = 2;
        t.shape = shape;
        t.has_data = true;
        t.data.data = (uint8_t *)pos;
        t.data.len = 3 * (size_t)shape[1] * sizeof(int32_t);
        Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
        sp.has_max_tokens = sp.has_ignore_eos = true;
        sp.max_tokens = 24;
        sp.ignore_eos = true;
        Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
        pr.ids = g.prompts[0];
        pr.n_ids = n;
        pr.positions = &t;
        pr.sampling = &sp;
        pr.has_rope_delta = true;
        pr.rope_delta = 0;
        Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
        h.has_request_id = true;
        h.request_id = k;
        assert_int_equal(eng_service_submit(s, &h, &pr, 1000), 0);
    }
    s_drain(s, out, 1000);
    assert_int_equal(out[0].n, 24);
    assert_memory_equal(out[0].tokens, g.tokens[0], 24 * sizeof(int32_t));
    assert_int_equal(out[1].finish, OMNIPIPE__FINISH_REASON__FINISH_ERROR);
    assert_int_equal(out[1].code, OMNIPIPE__CODE__INVALID_ARGUMENT);
    assert_true(strncmp(out[1].msg, "positions: ", 11) == 0);
    eng_service_free(s);
}

/* submits prompt ids with explicit [3, n] positions: the default 0..n-1 on every row (what mm_prep
 * sends for text), or shifted rows as media would have */
static void s_submit_pos(eng_service_t *s, uint64_t id, const int32_t *ids, uint32_t n, bool shifted) {
    int32_t pos[3 * 128];
    for (uint32_t row = 0; row < 3; row++)
        for (uint32_t i = 0; i < n; i++)
            pos[row * n + i] = (int32_t)i + (shifted && row == 1 && i > 2 ? 1 : 0);
    int64_t shape[2] = {3, (int64_t)n};
    Omnipipe__Tensor t = OMNIPIPE__TENSOR__INIT;
    t.has_dtype = true;
    t.dtype = OMNIPIPE__TENSOR__DTYPE__I32;
    t.n_shape = 2;
    t.shape = shape;
    t.has_data = true;
    t.data.data = (uint8_t *)pos;
    t.data.len = 3 * (size_t)n * sizeof(int32_t);
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_ignore_eos = true;
    sp.max_tokens = 4;
    sp.ignore_eos = true;
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = (int32_t *)ids;
    pr.n_ids = n;
    pr.positions = &t;
    pr.sampling = &sp;
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = id;
    assert_int_equal(eng_service_submit(s, &h, &pr, 1000), 0);
}

/* text-only requests that carry the default positions explicitly (mm_prep does) still use the prefix
 * cache; positions as media make them (shifted rows) never do */
static void test_positions_prefix_cache(void **state) {
    (void)state;
    t_golden_t g;
    s_load_golden("tiny-omni", &g);
    const uint32_t n = g.n_prompt[1];
    assert_true(n >= 16 && n <= 128);
    eng_service_t *s = s_new("tiny-omni", 0, 256, false);
    static t_out_t out[MAX_REQ];
    memset(out, 0, sizeof out);
    s_submit_pos(s, 0, g.prompts[1], n, false);
    s_drain(s, out, 1000);
    s_submit_pos(s, 1, g.prompts[1], n, false);
    s_drain(s, out, 1000);
    assert_int_equal(out[0].cached, 0);
    assert_true(out[1].cached >= n / 16 * 16 && out[1].cached > 0);
    s_submit_pos(s, 2, g.prompts[1], n, true);
    s_drain(s, out, 1000);
    assert_int_equal(out[2].cached, 0);
    assert_int_equal(out[2].n, 4);
    eng_service_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_qwen3),
        cmocka_unit_test(test_golden_qwen3_moe),
        cmocka_unit_test(test_golden_omni),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_second_turn),
        cmocka_unit_test(test_admission),
        cmocka_unit_test(test_bad_request),
        cmocka_unit_test(test_seeded_batch_independent),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_positions_prefix_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

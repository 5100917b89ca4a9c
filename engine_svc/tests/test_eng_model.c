/* test_eng_model.c: parity of the CPU reference backend with Hugging Face transformers (fp32 runs)
 * on every model in fixtures/ (tiny-omni, tiny-qwen3-moe, tiny-qwen3):
 *   - hidden states of prompt 0, layer by layer (hidden.N in golden.safetensors); a failure prints
 *     the first departing layer;
 *   - first-step logits of prompts 0 and 1 within 1e-4 absolute (first_logits.i);
 *   - 24 greedy tokens (argmax, lowest index on ties, eos suppressed, KV-cache decode) of every
 *     prompt equal runs.fp32[i].tokens, one sequence at a time;
 *   - the same tokens when every prompt runs in one batch: chunked prefill (n_past > 0 chunks),
 *     paged KV with interleaved, non-contiguous block tables, decodes batched together.
 *   - dummy load: random weights from config.json alone are deterministic and give finite logits.
 *   - moe_parallel validation (tensor parallel MoE split): a bad value names the field (option or
 *     OMNIPIPE_MOE_PARALLEL); expert mode with num_experts % tensor_parallel != 0 is -EINVAL
 *     naming num_experts; column mode and dense models pass that check.
 * Fixtures are read from OM_SHARED_DIR; nothing is copied into the repo. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "eng_loader.h"
#include "eng_model.h"

#define N_STEPS 24
#define BLOCK_SIZE 4

typedef struct fx {
    const char *name;    /* fixture dir name */
    char dir[1024];      /* model dir */
    eng_backend_t *b;
    eng_model_t *m;
    json_t *golden;      /* golden.json */
    eng_loader_t *gold;  /* golden.safetensors */
} fx_t;

static const char *s_shared(void) {
    const char *s = getenv("OM_SHARED_DIR");
    return s && *s ? s : OM_SHARED_DIR;
}

static int s_setup(void **state) {
    fx_t *f = *state;
    char err[512] = "", path[1200];
    snprintf(f->dir, sizeof(f->dir), "%s/fixtures/%s", s_shared(), f->name);
    assert_int_equal(eng_backend_cpu_new(2, &f->b), 0);
    int r = eng_model_load(f->dir, NULL, f->b, &f->m, err, sizeof(err));
    if (r < 0)
        fail_msg("%s: load failed: %s", f->name, err);
    snprintf(path, sizeof(path), "%s/golden.json", f->dir);
    json_error_t je;
    f->golden = json_load_file(path, 0, &je);
    if (!f->golden)
        fail_msg("%s: %s", path, je.text);
    snprintf(path, sizeof(path), "%s/golden.safetensors", f->dir);
    r = eng_loader_open_file(path, &f->gold, err, sizeof(err));
    if (r < 0)
        fail_msg("%s", err);
    assert_int_equal(eng_model_alloc_kv(f->m, 256, BLOCK_SIZE), 0);
    return 0;
}

static int s_teardown(void **state) {
    fx_t *f = *state;
    f->m = eng_model_free(f->m);
    f->b = eng_backend_free(f->b);
    f->gold = eng_loader_free(f->gold);
    json_decref(f->golden);
    f->golden = NULL;
    return 0;
}

static size_t s_prompt(const fx_t *f, size_t i, int32_t *out, size_t cap) {
    const json_t *p = json_array_get(json_object_get(f->golden, "prompts"), i);
    assert_non_null(p);
    size_t n = json_array_size(p);
    assert_true(n <= cap);
    for (size_t k = 0; k < n; k++)
        out[k] = (int32_t)json_integer_value(json_array_get(p, k));
    return n;
}

static void s_ref_tokens(const fx_t *f, size_t i, int32_t *out) {
    const json_t *t = json_object_get(
        json_array_get(json_object_get(json_object_get(f->golden, "runs"), "fp32"), i), "tokens");
    assert_int_equal(json_array_size(t), N_STEPS);
    for (size_t k = 0; k < N_STEPS; k++)
        out[k] = (int32_t)json_integer_value(json_array_get(t, k));
}

static const float *s_gold(const fx_t *f, const char *name, size_t n_expect) {
    const eng_st_tensor_t *t;
    char err[256];
    if (eng_loader_find(f->gold, name, &t, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(t->dtype, ENG_DTYPE_F32);
    assert_int_equal(t->n_bytes, n_expect * sizeof(float));
    return t->data;
}

/* argmax with eos suppressed; lowest index on ties */
static int32_t s_argmax(const fx_t *f, const float *logits) {
    const eng_config_t *c = eng_model_config(f->m);
    int32_t best = -1;
    for (uint32_t v = 0; v < c->vocab_size; v++) {
        bool eos = false;
        for (uint32_t e = 0; e < c->gen.n_eos; e++)
            eos |= c->gen.eos_token_ids[e] == (int32_t)v;
        if (!eos && (best < 0 || logits[v] > logits[best]))
            best = (int32_t)v;
    }
    return best;
}

/* Runs one sequence's chunk and downloads its logits row (vocab floats) into out. */
static void s_step1(fx_t *f, const int32_t *tokens, uint32_t n, uint32_t n_past,
                    const int32_t *btab, uint32_t n_blocks, float *out) {
    eng_batch_seq_t s = {.tokens = tokens, .n_tokens = n, .n_past = n_past, .block_table = btab,
                         .n_blocks = n_blocks, .want_logits = true};
    eng_batch_t b = {.seqs = &s, .n_seqs = 1, .n_tokens = n, .n_logits = 1};
    eng_tensor_t *logits = NULL;
    assert_int_equal(eng_model_forward(f->m, &b, &logits), 0);
    assert_non_null(logits);
    assert_int_equal(eng_tensor_nbytes(logits), eng_model_config(f->m)->vocab_size * sizeof(float));
    assert_int_equal(eng_backend_download(f->b, out, logits), 0);
}

static void test_hidden(void **state) {
    fx_t *f = *state;
    const eng_config_t *c = eng_model_config(f->m);
    int32_t prompt[256], btab[64];
    size_t n = s_prompt(f, 0, prompt, 256);
    for (int i = 0; i < 64; i++)
        btab[i] = 63 - i; /* reversed: positions land in high blocks first */
    size_t d = c->hidden_size, L = c->n_layers;
    float *cap = calloc((L + 1) * n * d, sizeof(float));
    float *logits = malloc(c->vocab_size * sizeof(float));
    assert_non_null(cap);
    assert_int_equal(eng_model_set_capture(f->m, cap, (uint32_t)n), 0);
    s_step1(f, prompt, (uint32_t)n, 0, btab, 64, logits);
    assert_int_equal(eng_model_set_capture(f->m, NULL, 0), 0);
    int first_bad = -1;
    for (size_t l = 0; l <= L; l++) {
        char name[32];
        snprintf(name, sizeof(name), "hidden.%zu", l);
        const float *ref = s_gold(f, name, n * d);
        double worst = 0, worst_ref = 0;
        for (size_t i = 0; i < n * d; i++) {
            double diff = fabs((double)cap[l * n * d + i] - ref[i]);
            double tol = 1e-4 * fmax(1.0, fabs(ref[i]));
            if (diff / tol > worst) {
                worst = diff / tol;
                worst_ref = ref[i];
            }
        }
        printf("  %s hidden.%zu: worst |diff|/tol = %.3g (ref %.4g)\n", f->name, l, worst,
               worst_ref);
        if (worst > 1.0 && first_bad < 0)
            first_bad = (int)l;
    }
    if (first_bad >= 0)
        printf("  %s: first departing layer: hidden.%d (%s)\n", f->name, first_bad,
               first_bad == 0 ? "embeddings"
               : (size_t)first_bad == L ? "final norm"
                                        : "output of the layer before");
    assert_int_equal(first_bad, -1);
    free(cap);
    free(logits);
}

static void test_first_logits(void **state) {
    fx_t *f = *state;
    const eng_config_t *c = eng_model_config(f->m);
    float *logits = malloc(c->vocab_size * sizeof(float));
    int32_t prompt[256], btab[64];
    for (int i = 0; i < 64; i++)
        btab[i] = i * 3 % 64; /* scattered */
    for (size_t p = 0; p < 2; p++) {
        size_t n = s_prompt(f, p, prompt, 256);
        s_step1(f, prompt, (uint32_t)n, 0, btab, 64, logits);
        char name[32];
        snprintf(name, sizeof(name), "first_logits.%zu", p);
        const float *ref = s_gold(f, name, c->vocab_size);
        double worst = 0;
        size_t at = 0;
        for (size_t v = 0; v < c->vocab_size; v++)
            if (fabs((double)logits[v] - ref[v]) > worst) {
                worst = fabs((double)logits[v] - ref[v]);
                at = v;
            }
        printf("  %s first_logits.%zu: max |diff| = %.3g at %zu\n", f->name, p, worst, at);
        assert_true(worst <= 1e-4);
    }
    free(logits);
}

static void test_greedy(void **state) {
    fx_t *f = *state;
    const eng_config_t *c = eng_model_config(f->m);
    float *logits = malloc(c->vocab_size * sizeof(float));
    size_t n_prompts = json_array_size(json_object_get(f->golden, "prompts"));
    assert_true(n_prompts > 0);
    for (size_t p = 0; p < n_prompts; p++) {
        int32_t prompt[256], ref[N_STEPS], got[N_STEPS], btab[64];
        for (int i = 0; i < 64; i++)
            btab[i] = (int32_t)((i * 7 + (int)p) % 64);
        uint32_t n = (uint32_t)s_prompt(f, p, prompt, 256);
        s_ref_tokens(f, p, ref);
        s_step1(f, prompt, n, 0, btab, 64, logits);
        for (int s = 0; s < N_STEPS; s++) {
            got[s] = s_argmax(f, logits);
            if (s + 1 < N_STEPS)
                s_step1(f, &got[s], 1, n + (uint32_t)s, btab, 64, logits);
        }
        int bad = -1;
        for (int s = 0; s < N_STEPS && bad < 0; s++)
            if (got[s] != ref[s])
                bad = s;
        if (bad >= 0)
            printf("  %s prompt %zu: token %d is %d, transformers gave %d\n", f->name, p, bad,
                   got[bad], ref[bad]);
        assert_int_equal(bad, -1);
    }
    printf("  %s: %zu prompts x %d greedy tokens match\n", f->name, n_prompts, N_STEPS);
    free(logits);
}

/* All prompts in one batch: prefill in chunks of up to 7 tokens per sequence per step (so later
 * chunks have n_past > 0), then batched decodes. Blocks are handed out round-robin across
 * sequences, so every block table is non-contiguous. */
static void test_batched(void **state) {
    fx_t *f = *state;
    const eng_config_t *c = eng_model_config(f->m);
    enum { MAXP = 8, CHUNK = 7, MAXB = 32 };
    size_t n_prompts = json_array_size(json_object_get(f->golden, "prompts"));
    assert_true(n_prompts <= MAXP);
    int32_t prompt[MAXP][256], ref[MAXP][N_STEPS], got[MAXP][N_STEPS], btab[MAXP][MAXB];
    uint32_t n[MAXP], done[MAXP] = {0}, n_gen[MAXP] = {0};
    for (size_t p = 0; p < n_prompts; p++) {
        n[p] = (uint32_t)s_prompt(f, p, prompt[p], 256);
        s_ref_tokens(f, p, ref[p]);
        for (int k = 0; k < MAXB; k++)
            btab[p][k] = (int32_t)(k * n_prompts + p); /* interleaved across sequences */
        assert_true((size_t)MAXB * n_prompts <= 256);
        assert_true(n[p] + N_STEPS <= MAXB * BLOCK_SIZE);
    }
    float *logits = malloc(MAXP * c->vocab_size * sizeof(float));
    for (;;) {
        eng_batch_seq_t seqs[MAXP];
        size_t idx[MAXP];
        uint32_t ns = 0, nt = 0;
        for (size_t p = 0; p < n_prompts; p++) {
            if (n_gen[p] == N_STEPS)
                continue;
            eng_batch_seq_t *s = &seqs[ns];
            memset(s, 0, sizeof(*s));
            if (done[p] < n[p]) { /* prefill chunk */
                uint32_t k = n[p] - done[p] < CHUNK ? n[p] - done[p] : CHUNK;
                s->tokens = prompt[p] + done[p];
                s->n_tokens = k;
                s->n_past = done[p];
                s->want_logits = done[p] + k == n[p];
            } else { /* decode the last generated token */
                s->tokens = &got[p][n_gen[p] - 1];
                s->n_tokens = 1;
                s->n_past = n[p] + n_gen[p] - 1;
                s->want_logits = true;
            }
            s->block_table = btab[p];
            s->n_blocks = MAXB;
            idx[ns++] = p;
            nt += s->n_tokens;
        }
        if (!ns)
            break;
        uint32_t nl = 0;
        for (uint32_t i = 0; i < ns; i++)
            nl += seqs[i].want_logits;
        eng_batch_t b = {.seqs = seqs, .n_seqs = ns, .n_tokens = nt, .n_logits = nl};
        eng_tensor_t *lt = NULL;
        assert_int_equal(eng_model_forward(f->m, &b, &lt), 0);
        if (nl)
            assert_int_equal(eng_backend_download(f->b, logits, lt), 0);
        uint32_t row = 0;
        for (uint32_t i = 0; i < ns; i++) {
            size_t p = idx[i];
            if (done[p] < n[p])
                done[p] += seqs[i].n_tokens;
            if (seqs[i].want_logits) {
                got[p][n_gen[p]] = s_argmax(f, logits + (size_t)row * c->vocab_size);
                n_gen[p]++;
                row++;
            }
        }
    }
    for (size_t p = 0; p < n_prompts; p++)
        for (int s = 0; s < N_STEPS; s++)
            if (got[p][s] != ref[p][s])
                fail_msg("%s batched prompt %zu: token %d is %d, transformers gave %d", f->name,
                         p, s, got[p][s], ref[p][s]);
    printf("  %s: batched (chunked prefill, paged KV) %zu prompts match\n", f->name, n_prompts);
    free(logits);
}

/* Bad batches are refused with -EINVAL, never run. */
static void test_bad_batch(void **state) {
    fx_t *f = *state;
    const eng_config_t *c = eng_model_config(f->m);
    int32_t tok[2] = {1, (int32_t)c->vocab_size}, btab[2] = {0, 1}, bad_btab[1] = {100000};
    eng_tensor_t *lt = NULL;
    eng_batch_seq_t s = {.tokens = tok, .n_tokens = 2, .block_table = btab, .n_blocks = 2,
                         .want_logits = true};
    eng_batch_t b = {.seqs = &s, .n_seqs = 1, .n_tokens = 2, .n_logits = 1};
    assert_int_equal(eng_model_forward(f->m, &b, &lt), -EINVAL); /* token id >= vocab */
    assert_non_null(strstr(eng_model_last_error(f->m), "outside vocab"));
    tok[1] = 1;
    s.block_table = bad_btab;
    s.n_blocks = 1;
    assert_int_equal(eng_model_forward(f->m, &b, &lt), -EINVAL); /* block id out of range */
    assert_non_null(strstr(eng_model_last_error(f->m), "block_table[0]"));
    s.block_table = btab;
    s.n_past = 2 * BLOCK_SIZE; /* table too short */
    assert_int_equal(eng_model_forward(f->m, &b, &lt), -EINVAL);
    s.n_past = 0;
    b.n_tokens = 3; /* count mismatch */
    assert_int_equal(eng_model_forward(f->m, &b, &lt), -EINVAL);
    b.n_tokens = 2;
    assert_int_equal(eng_model_forward(f->m, &b, &lt), 0);
    assert_string_equal(eng_model_last_error(f->m), "");
    assert_non_null(lt);
}

/* Dummy weights: from config.json alone, deterministic for a seed, finite, and different for
 * another seed. */
static void test_dummy(void **state) {
    fx_t *f = *state;
    char err[256];
    const eng_config_t *c = eng_model_config(f->m);
    float *l1 = malloc(c->vocab_size * sizeof(float)), *l2 = malloc(c->vocab_size * sizeof(float));
    float *l3 = malloc(c->vocab_size * sizeof(float));
    int32_t tok[4] = {1, 2, 3, 4}, btab[2] = {0, 1};
    eng_batch_seq_t s = {.tokens = tok, .n_tokens = 4, .block_table = btab, .n_blocks = 2,
                         .want_logits = true};
    eng_batch_t b = {.seqs = &s, .n_seqs = 1, .n_tokens = 4, .n_logits = 1};
    float *outs[3] = {l1, l2, l3};
    uint64_t seeds[3] = {7, 7, 8};
    for (int i = 0; i < 3; i++) {
        eng_model_load_opts_t o = {.load_format = "dummy", .dummy_seed = seeds[i]};
        eng_model_t *m = NULL;
        int r = eng_model_load(f->dir, &o, f->b, &m, err, sizeof(err));
        if (r < 0)
            fail_msg("%s dummy: %s", f->name, err);
        assert_int_equal(eng_model_weight_bytes(m), eng_model_weight_bytes(f->m));
        assert_int_equal(eng_model_alloc_kv(m, 4, BLOCK_SIZE), 0);
        eng_tensor_t *lt = NULL;
        assert_int_equal(eng_model_forward(m, &b, &lt), 0);
        assert_int_equal(eng_backend_download(f->b, outs[i], lt), 0);
        m = eng_model_free(m);
    }
    double maxabs = 0;
    for (uint32_t v = 0; v < c->vocab_size; v++) {
        assert_true(isfinite(l1[v]));
        maxabs = fmax(maxabs, fabs(l1[v]));
    }
    assert_memory_equal(l1, l2, c->vocab_size * sizeof(float));
    assert_memory_not_equal(l1, l3, c->vocab_size * sizeof(float));
    assert_true(maxabs > 1e-3 && maxabs < 1e3); /* "sane" activations */
    free(l1);
    free(l2);
    free(l3);
}

/* Backend factory and host dtype conversions (known bit patterns, round to nearest even). */
static void test_backend_basics(void **state) {
    (void)state;
    eng_backend_t *b = NULL;
    assert_int_equal(eng_backend_new("tpu", 0, 0, &b), -EINVAL);
    assert_null(b);
#ifndef OM_HAVE_CUDA
    assert_int_equal(eng_backend_new("cuda", 0, 0, &b), -EOPNOTSUPP);
    assert_null(b);
#endif
    assert_int_equal(eng_backend_new("cpu", 1, 0, &b), 0);
    assert_string_equal(b->ops->name, "cpu");
    for (int op = 0; op < ENG_OP_COUNT_; op++) {
        assert_true(b->ops->supports(b, (enum eng_op)op, ENG_DTYPE_BF16));
        assert_string_not_equal(eng_op_name((enum eng_op)op), "?");
    }
    /* alloc / upload / download / zero round trip, bounds checked */
    eng_tensor_t t;
    int64_t shape[2] = {3, 5};
    assert_int_equal(eng_tensor_init(&t, ENG_DTYPE_F32, 2, shape), 0);
    assert_int_equal(b->ops->alloc(b, &t), 0);
    float in[15], out[15];
    for (int i = 0; i < 15; i++)
        in[i] = (float)i * 0.5f;
    assert_int_equal(b->ops->upload(b, &t, 0, in, sizeof(in)), 0);
    assert_int_equal(b->ops->upload(b, &t, 4, in, sizeof(in)), -EINVAL);
    assert_int_equal(eng_backend_download(b, out, &t), 0);
    assert_memory_equal(in, out, sizeof(in));
    eng_tensor_t v = eng_tensor_rows_view(&t, 1, 2);
    assert_int_equal(eng_tensor_nelem(&v), 10);
    assert_int_equal(b->ops->zero(b, &v), 0);
    assert_int_equal(eng_backend_download(b, out, &t), 0);
    assert_true(out[4] == 2.0f && out[5] == 0.0f && out[14] == 0.0f);
    b->ops->release(b, &t);
    assert_null(t.data);
    b = eng_backend_free(b);
    assert_null(eng_backend_free(NULL));
    /* bf16 */
    assert_int_equal(eng_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(eng_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* tie -> even */
    assert_int_equal(eng_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-9f), 0x3f81);
    assert_int_equal(eng_f32_to_bf16(-2.0f), 0xc000);
    assert_true(eng_bf16_to_f32(0x3f81) == 1.0f + 0x1p-7f);
    /* f16 */
    assert_int_equal(eng_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(eng_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(eng_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(eng_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(eng_f32_to_f16(0x1p-24f), 0x0001);  /* smallest subnormal */
    assert_int_equal(eng_f32_to_f16(0x1p-14f), 0x0400);  /* smallest normal */
    assert_int_equal(eng_f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie -> even */
    assert_true(eng_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(eng_f16_to_f32(0x3555) == 0x1.554p-2f);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive half round-trips */
        assert_int_equal(eng_f32_to_f16(eng_f16_to_f32((uint16_t)h)), h);
}

/* Loads a fixture on the CPU backend with the given tensor_parallel / moe_parallel; returns the
 * result, err filled. */
static int s_load_tp(const char *name, int tp, const char *mp, char *err, size_t errlen) {
    char dir[1200];
    snprintf(dir, sizeof(dir), "%s/fixtures/%s", s_shared(), name);
    eng_backend_t *b = NULL;
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    eng_model_load_opts_t o = {.tensor_parallel = tp, .moe_parallel = mp};
    eng_model_t *m = NULL;
    err[0] = 0;
    int r = eng_model_load(dir, &o, b, &m, err, errlen);
    eng_model_free(m);
    eng_backend_free(b);
    return r;
}

static void test_moe_parallel_config(void **state) {
    (void)state;
    char err[512];
    unsetenv("OMNIPIPE_MOE_PARALLEL");
    /* bad value: the option, then the environment variable, named */
    assert_int_equal(s_load_tp("tiny-qwen3-moe", 1, "experts", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "moe_parallel"));
    assert_non_null(strstr(err, "experts"));
    setenv("OMNIPIPE_MOE_PARALLEL", "rows", 1);
    assert_int_equal(s_load_tp("tiny-qwen3-moe", 1, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "OMNIPIPE_MOE_PARALLEL"));
    /* tiny-qwen3-moe has 6 experts: expert mode over 4 GPUs cannot hold whole experts */
    setenv("OMNIPIPE_MOE_PARALLEL", "expert", 1);
    assert_int_equal(s_load_tp("tiny-qwen3-moe", 4, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "num_experts 6"));
    assert_non_null(strstr(err, "tensor_parallel 4"));
    unsetenv("OMNIPIPE_MOE_PARALLEL");
    /* the default is expert mode too */
    assert_int_equal(s_load_tp("tiny-qwen3-moe", 4, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "num_experts 6"));
    /* column mode, E % N == 0, a dense model: no moe_parallel error (the CPU backend then
       refuses tensor_parallel > 1 for its own reason) */
    int r = s_load_tp("tiny-qwen3-moe", 4, "column", err, sizeof(err));
    assert_true(r < 0 && strstr(err, "num_experts") == NULL);
    r = s_load_tp("tiny-qwen3-moe", 3, "expert", err, sizeof(err));
    assert_true(r < 0 && strstr(err, "num_experts") == NULL && strstr(err, "moe_parallel") == NULL);
    r = s_load_tp("tiny-qwen3", 4, "expert", err, sizeof(err));
    assert_true(r < 0 && strstr(err, "num_experts") == NULL);
    /* one GPU: any valid value loads */
    assert_int_equal(s_load_tp("tiny-qwen3-moe", 1, "column", err, sizeof(err)), 0);
}

static fx_t s_omni = {.name = "tiny-omni"}, s_moe = {.name = "tiny-qwen3-moe"},
            s_dense = {.name = "tiny-qwen3"};

#define MODEL_TESTS(fx)                                                                            \
    cmocka_unit_test_prestate_setup_teardown(test_hidden, s_setup, s_teardown, &fx),               \
        cmocka_unit_test_prestate_setup_teardown(test_first_logits, s_setup, s_teardown, &fx),     \
        cmocka_unit_test_prestate_setup_teardown(test_greedy, s_setup, s_teardown, &fx),           \
        cmocka_unit_test_prestate_setup_teardown(test_batched, s_setup, s_teardown, &fx),          \
        cmocka_unit_test_prestate_setup_teardown(test_bad_batch, s_setup, s_teardown, &fx),        \
        cmocka_unit_test_prestate_setup_teardown(test_dummy, s_setup, s_teardown, &fx)

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_backend_basics),
                                       cmocka_unit_test(test_moe_parallel_config),
                                       MODEL_TESTS(s_dense),
                                       MODEL_TESTS(s_moe), MODEL_TESTS(s_omni)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

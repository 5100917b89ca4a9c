/* test_eng_model_mm.c: the text model with multimodal inputs against transformers (fixtures/mm,
 * tiny-omni thinker, fp32): given the encoder outputs stored in the fixture (image_embeds with
 * their deepstack features, audio_embeds) and the 3-row M-RoPE position_ids, the CPU backend must
 * reproduce hidden.N layer by layer (prints the first departing layer), first_logits within 1e-4,
 * and the 16 greedy tokens (eos suppressed), decoding at positions n_past + rope_delta.
 * This is the parity test of interleaved M-RoPE: image rows have distinct T/H/W positions. */
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

typedef struct mm_case {
    const char *name;      /* key in mm_golden.json cases and mm_<name>.safetensors */
    int32_t pad_id;        /* placeholder token replaced by the embeddings */
    const char *embeds;    /* tensor holding the encoder output */
    uint32_t n_deepstack;  /* image_deepstack.0 .. n-1 */
} mm_case_t;

static const char *s_shared(void) {
    const char *s = getenv("OM_SHARED_DIR");
    return s && *s ? s : OM_SHARED_DIR;
}

static const eng_st_tensor_t *s_get(eng_loader_t *l, const char *name) {
    const eng_st_tensor_t *t;
    char err[512];
    if (eng_loader_find(l, name, &t, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(t->dtype, ENG_DTYPE_F32);
    return t;
}

static void s_run_case(void **state) {
    const mm_case_t *mc = *state;
    char path[1024], err[512] = "";
    snprintf(path, sizeof(path), "%s/fixtures/mm/mm_golden.json", s_shared());
    json_t *g = json_load_file(path, 0, NULL);
    assert_non_null(g);
    json_t *cs = json_object_get(json_object_get(g, "cases"), mc->name);
    assert_non_null(cs);
    snprintf(path, sizeof(path), "%s/fixtures/mm/mm_%s.safetensors", s_shared(), mc->name);
    eng_loader_t *gold = NULL;
    if (eng_loader_open_file(path, &gold, err, sizeof(err)) < 0)
        fail_msg("%s", err);

    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    snprintf(path, sizeof(path), "%s/fixtures/tiny-omni", s_shared());
    assert_int_equal(eng_backend_cpu_new(2, &b), 0);
    if (eng_model_load(path, NULL, b, &m, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const eng_config_t *c = eng_model_config(m);
    const size_t d = c->hidden_size, L = c->n_layers, V = c->vocab_size;
    enum { BS = 16, NB = 64 };
    assert_int_equal(eng_model_alloc_kv(m, NB, BS), 0);

    json_t *jids = json_object_get(cs, "input_ids");
    uint32_t n = (uint32_t)json_array_size(jids);
    int32_t *ids = malloc(n * sizeof(int32_t)), *pos = malloc(3 * n * sizeof(int32_t));
    int32_t *rows = malloc(n * sizeof(int32_t));
    uint32_t n_rows = 0;
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = (int32_t)json_integer_value(json_array_get(jids, i));
        if (ids[i] == mc->pad_id)
            rows[n_rows++] = (int32_t)i;
    }
    const eng_st_tensor_t *pt = s_get(gold, "position_ids");
    assert_int_equal(pt->n_bytes, 3 * n * sizeof(float));
    const float *pf = pt->data;
    int32_t max_pos = 0;
    for (uint32_t i = 0; i < 3 * n; i++) {
        assert_true(pf[i] == floorf(pf[i]) && pf[i] >= 0);
        pos[i] = (int32_t)pf[i];
        if (pos[i] > max_pos)
            max_pos = pos[i];
    }
    int32_t delta = (int32_t)json_number_value(json_array_get(json_object_get(cs, "rope_delta"), 0));
    assert_int_equal(max_pos + 1, (int32_t)n + delta); /* decode continues the position sequence */
    const eng_st_tensor_t *et = s_get(gold, mc->embeds);
    assert_int_equal(et->n_bytes, (size_t)n_rows * d * sizeof(float));
    float *ds = NULL;
    if (mc->n_deepstack) {
        ds = malloc(mc->n_deepstack * n_rows * d * sizeof(float));
        for (uint32_t k = 0; k < mc->n_deepstack; k++) {
            char name[64];
            snprintf(name, sizeof(name), "image_deepstack.%u", k);
            const eng_st_tensor_t *t = s_get(gold, name);
            assert_int_equal(t->n_bytes, (size_t)n_rows * d * sizeof(float));
            memcpy(ds + (size_t)k * n_rows * d, t->data, t->n_bytes);
        }
    }

    int32_t btab[NB];
    for (int i = 0; i < NB; i++)
        btab[i] = NB - 1 - i;
    float *cap = malloc((L + 1) * n * d * sizeof(float)), *logits = malloc(V * sizeof(float));
    assert_int_equal(eng_model_set_capture(m, cap, n), 0);
    assert_int_equal(eng_model_set_mm_rows(m, rows, n_rows, et->data, ds, mc->n_deepstack), 0);
    eng_batch_seq_t s = {.tokens = ids, .n_tokens = n, .positions = pos, .block_table = btab,
                         .n_blocks = NB, .want_logits = true};
    eng_batch_t bt = {.seqs = &s, .n_seqs = 1, .n_tokens = n, .n_logits = 1};
    eng_tensor_t *lt = NULL;
    assert_int_equal(eng_model_forward(m, &bt, &lt), 0);
    assert_int_equal(eng_backend_download(b, logits, lt), 0);
    assert_int_equal(eng_model_set_capture(m, NULL, 0), 0);

    int first_bad = -1;
    for (size_t l = 0; l <= L; l++) {
        char name[32];
        snprintf(name, sizeof(name), "hidden.%zu", l);
        const eng_st_tensor_t *ht = s_get(gold, name);
        assert_int_equal(ht->n_bytes, n * d * sizeof(float));
        const float *ref = ht->data;
        double worst = 0;
        for (size_t i = 0; i < n * d; i++)
            worst = fmax(worst, fabs((double)cap[l * n * d + i] - ref[i]) / (1e-4 * fmax(1.0, fabs(ref[i]))));
        printf("  mm %s hidden.%zu: worst |diff|/tol = %.3g\n", mc->name, l, worst);
        if (worst > 1.0 && first_bad < 0)
            first_bad = (int)l;
    }
    if (first_bad >= 0)
        printf("  mm %s: first departing layer: hidden.%d\n", mc->name, first_bad);
    assert_int_equal(first_bad, -1);
    const float *fl = s_get(gold, "first_logits")->data;
    double worst = 0;
    for (size_t v = 0; v < V; v++)
        worst = fmax(worst, fabs((double)logits[v] - fl[v]));
    printf("  mm %s first_logits: max |diff| = %.3g\n", mc->name, worst);
    assert_true(worst <= 1e-4);

    /* greedy decode, eos suppressed, positions n_past + rope_delta on all three rows */
    json_t *jt = json_object_get(cs, "tokens");
    size_t n_steps = json_array_size(jt);
    assert_true(n_steps > 0);
    for (size_t st = 0; st < n_steps; st++) {
        int32_t best = -1;
        for (uint32_t v = 0; v < V; v++) {
            bool eos = false;
            for (uint32_t e = 0; e < c->gen.n_eos; e++)
                eos |= c->gen.eos_token_ids[e] == (int32_t)v;
            if (!eos && (best < 0 || logits[v] > logits[best]))
                best = (int32_t)v;
        }
        int32_t want = (int32_t)json_integer_value(json_array_get(jt, st));
        if (best != want)
            fail_msg("mm %s: token %zu is %d, transformers gave %d", mc->name, st, best, want);
        if (st + 1 == n_steps)
            break;
        int32_t p1 = (int32_t)(n + st) + delta, p3[3] = {p1, p1, p1};
        eng_batch_seq_t d1 = {.tokens = &best, .n_tokens = 1, .n_past = n + (uint32_t)st,
                              .positions = p3, .block_table = btab, .n_blocks = NB,
                              .want_logits = true};
        eng_batch_t b1 = {.seqs = &d1, .n_seqs = 1, .n_tokens = 1, .n_logits = 1};
        assert_int_equal(eng_model_forward(m, &b1, &lt), 0);
        assert_int_equal(eng_backend_download(b, logits, lt), 0);
    }
    printf("  mm %s: %zu greedy tokens match\n", mc->name, n_steps);

    free(cap);
    free(logits);
    free(ds);
    free(ids);
    free(pos);
    free(rows);
    eng_model_free(m);
    eng_backend_free(b);
    eng_loader_free(gold);
    json_decref(g);
}

static mm_case_t s_image = {"image", 151655, "image_embeds", 3};
static mm_case_t s_two = {"two_images", 151655, "image_embeds", 3};
static mm_case_t s_audio = {"audio", 151675, "audio_embeds", 0};

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(s_run_case, &s_image),
        cmocka_unit_test_prestate(s_run_case, &s_two),
        cmocka_unit_test_prestate(s_run_case, &s_audio),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

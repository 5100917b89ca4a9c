/* test_dec_stream.c: unit tests of dec_stream (incremental detokenization).
 *
 *   fixture_parity   every decode[] case of fixtures/text_golden.json (transformers' decode), both
 *                    skip_special_tokens values, ids pushed one at a time and in random chunkings:
 *                    concatenated deltas and the final text equal the fixture byte for byte
 *   lossy_utf8       byte sequences whose U+FFFD placement is fixed by the WHATWG/Rust "maximal
 *                    subpart" rule (expected strings from Python's bytes.decode('utf-8','replace'),
 *                    which agrees with Rust's from_utf8_lossy)
 *   utf8_property    random ids (biased to lone high bytes): every delta is valid UTF-8, and the
 * text so far is always a prefix of decode(ids) - so U+FFFD only appears where decode() puts it -
 * and the final text equals om_vocab_decode stop_*           stop strings: held back, trimmed,
 * across token boundaries, several stop strings, include_stop_str_in_output, released when
 * unmatched, chunking independence reasoning_*      <think>...</think> split (vLLM Qwen3 parser
 * semantics) Run one with: test_dec_stream <name>. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <jansson.h>

#include "dec_stream.h"
#include "dec_test_util.h"

// --- helpers -------------------------------------------------------------------------------------

typedef struct run {
    dt_str_t text;       /* concatenated content deltas */
    dt_str_t reasoning;  /* concatenated reasoning deltas */
    dt_str_t final_text; /* dec_stream_text after the final push */
    dt_str_t final_reasoning;
    bool stopped;
    char stop_str[64];
    bool deltas_valid; /* every delta was valid UTF-8 */
} run_t;

static void run_free(run_t *r) {
    free(r->text.p);
    free(r->reasoning.p);
    free(r->final_text.p);
    free(r->final_reasoning.p);
    memset(r, 0, sizeof(*r));
}

static void run_take(run_t *r, const dec_delta_t *d) {
    if (!dt_utf8_valid(d->text, d->text_len) || !dt_utf8_valid(d->reasoning, d->reasoning_len))
        r->deltas_valid = false;
    dt_str_add(&r->text, d->text, d->text_len);
    dt_str_add(&r->reasoning, d->reasoning, d->reasoning_len);
    if (d->stopped && !r->stopped) {
        r->stopped = true;
        snprintf(r->stop_str, sizeof(r->stop_str), "%s", d->stop_str);
    }
}

/* Pushes ids in chunks given by cuts (chunk sizes; NULL = one at a time), then a final empty push.
 */
static void run_ids(run_t *r, const dec_stream_opts_t *o, const int32_t *ids, size_t n,
                    const size_t *chunks, size_t n_chunks) {
    memset(r, 0, sizeof(*r));
    r->deltas_valid = true;
    dt_str_add(&r->text, "", 0);
    dt_str_add(&r->reasoning, "", 0);
    dec_stream_t *s = NULL;
    assert_int_equal(dec_stream_new(dt_vocab, o, &s), 0);
    dec_delta_t d;
    size_t pos = 0;
    for (size_t c = 0; pos < n; c++) {
        size_t k = chunks ? (c < n_chunks ? chunks[c] : n - pos) : 1;
        if (k > n - pos)
            k = n - pos;
        assert_int_equal(dec_stream_push(s, ids + pos, k, false, &d), 0);
        run_take(r, &d);
        pos += k;
    }
    assert_int_equal(dec_stream_push(s, NULL, 0, true, &d), 0);
    run_take(r, &d);
    size_t len;
    const char *t = dec_stream_text(s, &len);
    dt_str_add(&r->final_text, t, len);
    t = dec_stream_reasoning(s, &len);
    dt_str_add(&r->final_reasoning, t, len);
    dec_stream_free(s);
}

static void run_str(run_t *r, const dec_stream_opts_t *o, const int32_t *ids, size_t n) {
    run_ids(r, o, ids, n, NULL, 0);
}

// --- fixture parity ------------------------------------------------------------------------------

static void test_fixture_parity(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof(path), "%s/fixtures/text_golden.json", dt_shared_dir());
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *cases = json_object_get(root, "decode");
    assert_true(json_is_array(cases));
    size_t n_cases = json_array_size(cases), n_checked = 0, n_bad = 0;
    assert_true(n_cases > 0);
    int32_t *ids = NULL;
    for (size_t ci = 0; ci < n_cases; ci++) {
        json_t *c = json_array_get(cases, ci);
        json_t *jids = json_object_get(c, "ids");
        size_t n = json_array_size(jids);
        ids = realloc(ids, (n ? n : 1) * sizeof(*ids));
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(jids, i));
        for (int skip = 0; skip < 2; skip++) {
            json_t *jexp = json_object_get(c, skip ? "skip_special" : "keep_special");
            const char *exp = json_string_value(jexp);
            size_t exp_len = json_string_length(jexp);
            assert_non_null(exp);
            dec_stream_opts_t o = {.skip_special_tokens = skip};
            for (int chunking = 0; chunking < 4; chunking++) {
                size_t chunks[64], n_chunks = 0;
                if (chunking > 0) { /* random chunk sizes 1..6, the last push takes the rest */
                    for (size_t left = n; left > 0 && n_chunks < 64; n_chunks++) {
                        size_t k = 1 + dt_rand() % 6;
                        chunks[n_chunks] = k < left ? k : left;
                        left -= chunks[n_chunks];
                    }
                }
                run_t r;
                run_ids(&r, &o, ids, n, chunking ? chunks : NULL, n_chunks);
                bool ok = r.deltas_valid && r.text.len == exp_len &&
                          memcmp(r.text.p, exp, exp_len) == 0 && r.final_text.len == exp_len &&
                          memcmp(r.final_text.p, exp, exp_len) == 0 && r.reasoning.len == 0;
                if (!ok && n_bad++ < 5)
                    fprintf(stderr,
                            "decode[%zu] skip_special=%d chunking=%d:\n  got  '%s'\n  want '%s'\n",
                            ci, skip, chunking, r.text.p, exp);
                n_checked++;
                run_free(&r);
            }
        }
    }
    free(ids);
    json_decref(root);
    fprintf(stderr,
            "fixture_parity: %zu cases x 2 flags x 4 chunkings = %zu runs, %zu mismatches\n",
            n_cases, n_checked, n_bad);
    assert_int_equal(n_bad, 0);
}

// --- lossy UTF-8 ---------------------------------------------------------------------------------

static void test_lossy_utf8(void **state) {
    (void)state;
    static const struct {
        const char *bytes;
        const char *want; /* Python bytes.decode('utf-8', 'replace') */
    } cases[] = {
        {"\xe4\xb8", "\xef\xbf\xbd"},
        {"\xe4\xb8"
         "a",
         "\xef\xbf\xbd"
         "a"},
        {"\xf0\x9f\x98", "\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
        {"a\xe4\xb8\xad"
         "b",
         "a\xe4\xb8\xad"
         "b"},
    };
    /* ids with no token decode to nothing (tokenizers' decode skips them) */
    int32_t odd[] = {-1, dt_byte_id['a'], 2000000000, (int32_t)om_vocab_size(dt_vocab)};
    run_t r0;
    dec_stream_opts_t o0 = {.skip_special_tokens = false};
    run_str(&r0, &o0, odd, 4);
    assert_string_equal(r0.text.p, "a");
    run_free(&r0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int32_t ids[16];
        size_t n = dt_bytes(ids, 0, cases[i].bytes);
        dec_stream_opts_t o = {.skip_special_tokens = true};
        run_t r;
        run_str(&r, &o, ids, n);
        assert_true(r.deltas_valid);
        assert_string_equal(r.text.p, cases[i].want);
        assert_string_equal(r.final_text.p, cases[i].want);
        run_free(&r);
    }
}

// --- UTF-8 property ------------------------------------------------------------------------------

static void test_utf8_property(void **state) {
    (void)state;
    size_t vsize = om_vocab_size(dt_vocab);
    int32_t ids[48];
    dt_str_t got = {0};
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 1 + dt_rand() % 40;
        for (size_t i = 0; i < n; i++) {
            uint64_t k = dt_rand() % 4;
            if (k == 0)
                ids[i] = dt_byte_id[0x80 + dt_rand() % 0x80]; /* a lone high byte */
            else if (k == 1)
                ids[i] = (int32_t)(151643 + dt_rand() % 33); /* added tokens, special or not */
            else
                ids[i] = (int32_t)(dt_rand() % vsize);
        }
        for (int skip = 0; skip < 2; skip++) {
            char *want = NULL;
            size_t want_len = 0;
            assert_int_equal(om_vocab_decode(dt_vocab, ids, n, skip, &want, &want_len), 0);
            dec_stream_opts_t o = {.skip_special_tokens = skip};
            dec_stream_t *s = NULL;
            assert_int_equal(dec_stream_new(dt_vocab, &o, &s), 0);
            dt_str_clear(&got);
            dt_str_add(&got, "", 0);
            for (size_t i = 0; i <= n; i++) {
                dec_delta_t d;
                assert_int_equal(dec_stream_push(s, ids + i, i < n ? 1 : 0, i == n, &d), 0);
                if (!dt_utf8_valid(d.text, d.text_len))
                    fail_msg("iter %d: delta %zu is not valid UTF-8", iter, i);
                dt_str_add(&got, d.text, d.text_len);
                /* no U+FFFD (or anything else) that decode() would not also produce */
                if (got.len > want_len || memcmp(got.p, want, got.len) != 0)
                    fail_msg("iter %d skip %d: after %zu ids '%s' is not a prefix of '%s'", iter,
                             skip, i, got.p, want);
            }
            assert_int_equal(got.len, want_len);
            size_t tl;
            const char *t = dec_stream_text(s, &tl);
            assert_int_equal(tl, want_len);
            assert_memory_equal(t, want, want_len);
            dec_stream_free(s);
            free(want);
        }
    }
    free(got.p);
}

// --- stop strings --------------------------------------------------------------------------------

static void test_stop_held_and_trimmed(void **state) {
    (void)state;
    const char *stop[] = {"world"};
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = stop, .n_stop = 1};
    dec_stream_t *s = NULL;
    assert_int_equal(dec_stream_new(dt_vocab, &o, &s), 0);
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0, "Hello wor");
    dec_delta_t d;
    assert_int_equal(dec_stream_push(s, ids, n, false, &d), 0);
    /* "wor" could still begin "world": held back */
    assert_int_equal(d.text_len, 6);
    assert_memory_equal(d.text, "Hello ", 6);
    assert_false(d.stopped);
    n = dt_bytes(ids, 0, "l");
    assert_int_equal(dec_stream_push(s, ids, n, false, &d), 0);
    assert_int_equal(d.text_len, 0);
    n = dt_bytes(ids, 0, "d!!");
    assert_int_equal(dec_stream_push(s, ids, n, false, &d), 0);
    assert_true(d.stopped);
    assert_string_equal(d.stop_str, "world");
    assert_int_equal(d.text_len, 0);
    size_t len;
    const char *t = dec_stream_text(s, &len);
    assert_int_equal(len, 6);
    assert_memory_equal(t, "Hello ", 6);
    /* nothing comes out after the stop */
    assert_int_equal(dec_stream_push(s, ids, n, true, &d), 0);
    assert_int_equal(d.text_len, 0);
    dec_stream_free(s);
}

static void test_stop_released_when_unmatched(void **state) {
    (void)state;
    const char *stop[] = {"world"};
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = stop, .n_stop = 1};
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0, "Hello wor");
    run_t r;
    run_str(&r, &o, ids, n);
    assert_false(r.stopped);
    assert_string_equal(r.text.p, "Hello wor");
    assert_string_equal(r.final_text.p, "Hello wor");
    run_free(&r);
    /* a prefix that breaks off is released as soon as it cannot match any more */
    n = dt_bytes(ids, 0, "a worx");
    dec_stream_t *s = NULL;
    assert_int_equal(dec_stream_new(dt_vocab, &o, &s), 0);
    dec_delta_t d;
    assert_int_equal(dec_stream_push(s, ids, 5, false, &d), 0);
    assert_int_equal(d.text_len, 2);
    assert_int_equal(dec_stream_push(s, ids + 5, 1, false, &d), 0);
    assert_int_equal(d.text_len, 4);
    assert_memory_equal(d.text, "worx", 4);
    dec_stream_free(s);
}

static void test_stop_multitoken_and_inside_token(void **state) {
    (void)state;
    /* a stop string spread over three real tokens, and one inside a single token */
    int32_t t_hello = dt_token("Hello"), t_world = dt_token(" world"), t_bang = dt_token("!");
    assert_true(t_hello >= 0 && t_world >= 0 && t_bang >= 0);
    int32_t ids[] = {t_hello, t_world, t_bang, t_hello};
    const char *stop1[] = {"lo world!"};
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = stop1, .n_stop = 1};
    run_t r;
    run_str(&r, &o, ids, 4);
    assert_true(r.stopped);
    assert_string_equal(r.text.p, "Hel");
    assert_string_equal(r.final_text.p, "Hel");
    run_free(&r);
    const char *stop2[] = {"orl"};
    o.stop = stop2;
    run_str(&r, &o, ids, 4);
    assert_true(r.stopped);
    assert_string_equal(r.stop_str, "orl");
    assert_string_equal(r.text.p, "Hello w");
    run_free(&r);
}

static void test_stop_multibyte(void **state) {
    (void)state;
    const char *stop[] = {"\xe4\xbd\xa0\xe5\xa5\xbd"}; /* 你好, fed byte by byte */
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = stop, .n_stop = 1};
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0,
                        "a\xe4\xbd\xa0\xe5\xa5\xbd"
                        "b");
    run_t r;
    run_str(&r, &o, ids, n);
    assert_true(r.deltas_valid);
    assert_true(r.stopped);
    assert_string_equal(r.text.p, "a");
    run_free(&r);
}

static void test_stop_several(void **state) {
    (void)state;
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0, "abcxyzabcd");
    /* the match that ends first wins, whatever the list order */
    const char *s1[] = {"xyz", "bc"};
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = s1, .n_stop = 2};
    run_t r;
    run_str(&r, &o, ids, n);
    assert_true(r.stopped);
    assert_string_equal(r.stop_str, "bc");
    assert_string_equal(r.text.p, "a");
    run_free(&r);
    const char *s2[] = {"zab", "xyzabcd", "cx"};
    o.stop = s2;
    o.n_stop = 3;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.stop_str, "cx");
    assert_string_equal(r.text.p, "ab");
    run_free(&r);
    /* equal end: the longer stop string */
    const char *s3[] = {"bc", "abc"};
    o.stop = s3;
    o.n_stop = 2;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.stop_str, "abc");
    assert_string_equal(r.text.p, "");
    run_free(&r);
    /* empty stop strings are ignored */
    const char *s4[] = {"", "yz"};
    o.stop = s4;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.stop_str, "yz");
    assert_string_equal(r.text.p, "abcx");
    run_free(&r);
}

static void test_stop_include_in_output(void **state) {
    (void)state;
    const char *stop[] = {"world"};
    dec_stream_opts_t o = {
        .skip_special_tokens = true, .stop = stop, .n_stop = 1, .include_stop_str_in_output = true};
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0, "Hello world!!");
    run_t r;
    run_str(&r, &o, ids, n);
    assert_true(r.stopped);
    assert_string_equal(r.text.p, "Hello world");
    assert_string_equal(r.final_text.p, "Hello world");
    run_free(&r);
    /* the stop string stays in the output, so its prefix need not be held back */
    dec_stream_t *s = NULL;
    assert_int_equal(dec_stream_new(dt_vocab, &o, &s), 0);
    dec_delta_t d;
    assert_int_equal(dec_stream_push(s, ids, 9, false, &d), 0);
    assert_int_equal(d.text_len, 9);
    assert_memory_equal(d.text, "Hello wor", 9);
    assert_int_equal(dec_stream_push(s, ids + 9, 3, false, &d), 0);
    assert_true(d.stopped);
    assert_int_equal(d.text_len, 2);
    assert_memory_equal(d.text, "ld", 2);
    dec_stream_free(s);
}

static void test_stop_chunking_independent(void **state) {
    (void)state;
    const char *stop[] = {"an", "nana", "ba"};
    dec_stream_opts_t o = {.skip_special_tokens = true, .stop = stop, .n_stop = 3};
    const char *texts[] = {"xxbanana", "bananas", "xnxanxa", "a\xe4\xbd\xa0n"};
    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        int32_t ids[32];
        size_t n = dt_bytes(ids, 0, texts[t]);
        run_t ref;
        size_t all[] = {n};
        run_ids(&ref, &o, ids, n, all, 1);
        for (int k = 0; k < 20; k++) {
            size_t chunks[32], nc = 0;
            for (size_t left = n; left > 0; nc++) {
                size_t c = 1 + dt_rand() % 3;
                chunks[nc] = c < left ? c : left;
                left -= chunks[nc];
            }
            run_t r;
            run_ids(&r, &o, ids, n, chunks, nc);
            assert_string_equal(r.text.p, ref.text.p);
            assert_string_equal(r.stop_str, ref.stop_str);
            assert_true(r.deltas_valid);
            run_free(&r);
        }
        run_free(&ref);
    }
}

static void test_stop_bad_opts(void **state) {
    (void)state;
    dec_stream_t *s = NULL;
    dec_stream_opts_t o = {.n_stop = 1};
    assert_int_equal(dec_stream_new(dt_vocab, &o, &s), -EINVAL);
    const char *nul[] = {NULL};
    o.stop = nul;
    assert_int_equal(dec_stream_new(dt_vocab, &o, &s), -EINVAL);
    assert_null(s);
    assert_null(dec_stream_free(NULL));
}

// --- reasoning split -----------------------------------------------------------------------------

static int32_t s_think, s_end_think;

static void test_reasoning_tags_as_tokens(void **state) {
    (void)state;
    int32_t ids[64];
    size_t n = 0;
    ids[n++] = s_think;
    n = dt_bytes(ids, n, "\nLet me think.\n");
    ids[n++] = s_end_think;
    n = dt_bytes(ids, n, "\n\nThe answer is 42.");
    dec_stream_opts_t o = {.skip_special_tokens = true, .split_reasoning = true};
    run_t r;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.reasoning.p, "\nLet me think.\n");
    assert_string_equal(r.text.p, "\n\nThe answer is 42.");
    assert_string_equal(r.final_reasoning.p, "\nLet me think.\n");
    assert_string_equal(r.final_text.p, "\n\nThe answer is 42.");
    run_free(&r);
    /* without split the tags stay in the text, as decode() gives them */
    o.split_reasoning = false;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.text.p, "<think>\nLet me think.\n</think>\n\nThe answer is 42.");
    assert_string_equal(r.reasoning.p, "");
    run_free(&r);
}

static void test_reasoning_starts_open(void **state) {
    (void)state;
    int32_t ids[64];
    size_t n = dt_bytes(ids, 0, "abc");
    ids[n++] = s_end_think;
    n = dt_bytes(ids, n, "xyz");
    dec_stream_opts_t o = {
        .skip_special_tokens = true, .split_reasoning = true, .reasoning_starts_open = true};
    run_t r;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.reasoning.p, "abc");
    assert_string_equal(r.text.p, "xyz");
    assert_string_equal(r.final_reasoning.p, "abc");
    assert_string_equal(r.final_text.p, "xyz");
    run_free(&r);
}

static void test_reasoning_tags_split_across_tokens(void **state) {
    (void)state;
    /* "<think>r1</think>c1" fed byte by byte and in random chunks: tags are found in the text */
    int32_t ids[64];
    size_t n = dt_bytes(ids, 0, "<think>r1 < </th</think>c1 </think");
    dec_stream_opts_t o = {.skip_special_tokens = true, .split_reasoning = true};
    for (int k = 0; k < 10; k++) {
        size_t chunks[64], nc = 0;
        for (size_t left = n; left > 0; nc++) {
            size_t c = 1 + dt_rand() % 4;
            chunks[nc] = c < left ? c : left;
            left -= chunks[nc];
        }
        run_t r;
        run_ids(&r, &o, ids, n, k ? chunks : NULL, k ? nc : 0);
        assert_string_equal(r.reasoning.p, "r1 < </th");
        assert_string_equal(r.text.p, "c1 </think");
        assert_string_equal(r.final_reasoning.p, "r1 < </th");
        assert_string_equal(r.final_text.p, "c1 </think");
        run_free(&r);
    }
}

static void test_reasoning_no_end_tag(void **state) {
    (void)state;
    /* template opened <think>, output truncated before </think>: streamed as reasoning, but the
     * final text is all content (Qwen3 parser: no </think> -> content) */
    int32_t ids[64];
    size_t n = dt_bytes(ids, 0, "still thinking");
    dec_stream_opts_t o = {
        .skip_special_tokens = true, .split_reasoning = true, .reasoning_starts_open = true};
    run_t r;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.reasoning.p, "still thinking");
    assert_string_equal(r.final_text.p, "still thinking");
    assert_string_equal(r.final_reasoning.p, "");
    run_free(&r);
    /* no tags at all: content */
    o.reasoning_starts_open = false;
    run_str(&r, &o, ids, n);
    assert_string_equal(r.text.p, "still thinking");
    assert_string_equal(r.reasoning.p, "");
    assert_string_equal(r.final_text.p, "still thinking");
    run_free(&r);
    /* <think> without </think>: the tag is stripped, the rest is content */
    n = 0;
    ids[n++] = s_think;
    n = dt_bytes(ids, n, "hmm");
    run_str(&r, &o, ids, n);
    assert_string_equal(r.reasoning.p, "hmm");
    assert_string_equal(r.final_text.p, "hmm");
    assert_string_equal(r.final_reasoning.p, "");
    run_free(&r);
}

static void test_reasoning_with_stop(void **state) {
    (void)state;
    int32_t ids[64];
    size_t n = 0;
    ids[n++] = s_think;
    n = dt_bytes(ids, n, "r STOP r");
    ids[n++] = s_end_think;
    n = dt_bytes(ids, n, "answer STOP more");
    const char *stop[] = {"STOP"};
    dec_stream_opts_t o = {
        .skip_special_tokens = true, .split_reasoning = true, .stop = stop, .n_stop = 1};
    run_t r;
    run_str(&r, &o, ids, n);
    /* stop strings apply to the whole output, reasoning included (as vLLM) */
    assert_true(r.stopped);
    assert_string_equal(r.reasoning.p, "r ");
    assert_string_equal(r.text.p, "");
    assert_string_equal(r.final_text.p, "r ");
    run_free(&r);
}

static int setup(void **state) {
    (void)state;
    if (dt_load_vocab() < 0)
        return -1;
    s_think = dt_token("<think>");
    s_end_think = dt_token("</think>");
    return s_think >= 0 && s_end_think >= 0 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    dt_vocab = om_vocab_free(dt_vocab);
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_parity),
        cmocka_unit_test(test_lossy_utf8),
        cmocka_unit_test(test_utf8_property),
        cmocka_unit_test(test_stop_held_and_trimmed),
        cmocka_unit_test(test_stop_released_when_unmatched),
        cmocka_unit_test(test_stop_multitoken_and_inside_token),
        cmocka_unit_test(test_stop_multibyte),
        cmocka_unit_test(test_stop_several),
        cmocka_unit_test(test_stop_include_in_output),
        cmocka_unit_test(test_stop_chunking_independent),
        cmocka_unit_test(test_stop_bad_opts),
        cmocka_unit_test(test_reasoning_tags_as_tokens),
        cmocka_unit_test(test_reasoning_starts_open),
        cmocka_unit_test(test_reasoning_tags_split_across_tokens),
        cmocka_unit_test(test_reasoning_no_end_tag),
        cmocka_unit_test(test_reasoning_with_stop),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, setup, teardown);
}

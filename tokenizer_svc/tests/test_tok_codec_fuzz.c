/* test_tok_codec_fuzz.c: property and fuzz tests of the BPE codec on deterministic random text:
 * the hand-written pre-tokenizer scanner against PCRE2 running the checkpoint's regex, the whole
 * encoder with either engine, the merge loop against a naive reference, round trips, special-token
 * splitting, digits and whitespace runs. OM_FUZZ_ITERS scales the number of cases (default 1). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include <cmocka.h>

#include "om_vocab.h"
#include "tok_bpe.h"
#include "tok_codec.h"
#include "tok_norm.h"
#include "tok_pretok.h"
#include "tok_unicode.h"

static tok_codec_t *g_codec;      /* tiny-omni, scanner */
static tok_codec_t *g_codec_pcre; /* tiny-omni, PCRE2 */
static tok_pretok_t *g_pretok;    /* the checkpoint's regex */
static int g_scale = 1;

static uint64_t g_rng;
static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

/* Code points that sit on the regex's class boundaries. */
static const uint32_t g_pool[] = {
    /* whitespace: Oniguruma \s, and look-alikes that are not \s */
    ' ', ' ', ' ', ' ', '\t', '\n', '\n', '\r', 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x180E, 0x2000, 0x2005, 0x200A,
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0x200B, 0x200C, 0x200D, 0xFEFF, 0x2060,
    /* contractions */
    '\'', '\'', '\'', 's', 'S', 't', 'T', 'r', 'R', 'e', 'E', 'v', 'V', 'm', 'M', 'l', 'L', 'd', 'D', 0x17F,
    0x2019, 'k', 0x212A,
    /* ASCII */
    'a', 'z', 'A', 'Z', 'x', '_', '-', '.', ',', '!', '?', '(', ')', '{', '}', '[', ']', '<', '>', '|', '/', '\\',
    '#', '$', '%', '^', '&', '*', '+', '=', '~', '`', '"', ':', ';', '@',
    /* digits and other numbers (Nd, Nl, No) */
    '0', '1', '5', '9', 0x660, 0x966, 0xFF11, 0xB2, 0xBD, 0x2167, 0x3007, 0x2460, 0x1D7CE, 0x10107,
    /* letters of many scripts, cased and uncased */
    0xE9, 0xDF, 0xC6, 0x3A9, 0x3C9, 0x416, 0x436, 0x5D0, 0x627, 0x915, 0xE01, 0x10D0, 0x4E2D, 0x6587, 0x3042,
    0x30AB, 0xAC00, 0xD55C, 0xFB05, 0x1F1, 0x2C6, 0x2B0, 0x3005, 0x20000, 0x1E900,
    /* combining marks (not \p{L}): NFC composes some of them */
    0x301, 0x308, 0x327, 0x93F, 0x94D, 0xE31, 0x20DD, 0x5B4, 0x64B, 0x1AB0,
    /* pieces NFC changes, and starters that compose with a following starter */
    0x212B, 0x2126, 0x1E9B, 0x344, 0xF900, 0x2F800, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0xB47, 0xB3E,
    0xBC6, 0xBBE, 0x9C7, 0x9BE, 0x1025, 0x102E, 0x1B05, 0x1B35,
    /* marks tokenizers' NFC does not know (plain starters to it), and letters / numbers new in Unicode 15 */
    0x898, 0x1715, 0x1E4EC, 0x1E08F, 0x10EFD, 0x1AC1, 0x7FD, 0x11F04, 0x1D2D3, 0x1E4D0, 0x31350,
    /* symbols, emoji, punctuation */
    0x2014, 0x201C, 0x2026, 0x3002, 0xFF0C, 0x20AC, 0xA9, 0x1F600, 0x1F409, 0x1F525, 0x1F469, 0xFE0F, 0x1F1FA,
    0x1F1F8, 0x1F3FB, 0xFFFD, 0xE000, 0x10FFFD,
};

static size_t put_cp(char *o, uint32_t cp)
{
    utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o);
    return (size_t)n;
}

static uint32_t rnd_cp(void)
{
    uint32_t r = rnd() % 100;
    if (r < 80)
        return g_pool[rnd() % (sizeof(g_pool) / sizeof(g_pool[0]))];
    if (r < 90)
        return 0x20 + rnd() % 0x5F;
    for (;;) { /* any scalar value */
        uint32_t cp = rnd() % 0x110000;
        if (cp < 0xD800 || cp > 0xDFFF)
            return cp;
    }
}

/* Random valid UTF-8 of up to max_cp code points into buf (4 * max_cp + 1 bytes). */
static size_t rnd_text(char *buf, size_t max_cp)
{
    size_t n = rnd() % (max_cp + 1), o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = rnd_cp();
        if (rnd() % 8 == 0) { /* runs stress the greedy classes */
            size_t k = 2 + rnd() % 12;
            for (size_t j = 0; j < k && i < n; j++, i++)
                o += put_cp(buf + o, cp);
        } else
            o += put_cp(buf + o, cp);
    }
    buf[o] = 0;
    return o;
}

/* ---- pieces ---- */

typedef struct pieces {
    size_t off[4096], len[4096];
    size_t n;
    const char *base;
} pieces_t;

static int collect(void *ctx, const char *s, size_t n)
{
    pieces_t *p = ctx;
    if (p->n == 4096)
        return -E2BIG;
    p->off[p->n] = (size_t)(s - p->base);
    p->len[p->n++] = n;
    return 0;
}

static int setup(void **state)
{
    const char *e = getenv("OM_FUZZ_ITERS");
    if (e && atoi(e) > 0)
        g_scale = atoi(e);
    const char *sd = getenv("OM_SHARED_DIR");
    char path[4096], err[512];
    snprintf(path, sizeof(path), "%s/fixtures/tiny-omni", sd && *sd ? sd : OM_SHARED_DIR);
    if (tok_codec_load(path, &g_codec, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    setenv("OM_TOK_PRETOK", "pcre2", 1);
    int rc = tok_codec_load(path, &g_codec_pcre, err, sizeof(err));
    unsetenv("OM_TOK_PRETOK");
    if (rc)
        return -1;
    if (tok_pretok_new(om_vocab_pretok_regex(tok_codec_vocab(g_codec)), &g_pretok, err, sizeof(err)))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    tok_codec_free(g_codec);
    tok_codec_free(g_codec_pcre);
    tok_pretok_free(g_pretok);
    return 0;
}

/* The scanner cuts every random text exactly where PCRE2 running the regex does. */
static void test_scanner_vs_pcre2(void **state)
{
    assert_true(tok_pretok_has_scanner(g_pretok));
    static char buf[4 * 200 + 1];
    static pieces_t a, b;
    g_rng = 0x9E3779B97F4A7C15ull;
    size_t iters = 30000 * (size_t)g_scale, total_pieces = 0;
    for (size_t it = 0; it < iters; it++) {
        size_t n = rnd_text(buf, it % 10 == 0 ? 200 : 24);
        a.n = b.n = 0;
        a.base = b.base = buf;
        assert_int_equal(tok_pretok_split(g_pretok, TOK_PRETOK_SCANNER, buf, n, collect, &a), 0);
        assert_int_equal(tok_pretok_split(g_pretok, TOK_PRETOK_PCRE2, buf, n, collect, &b), 0);
        bool same = a.n == b.n && !memcmp(a.off, b.off, a.n * sizeof(size_t)) &&
                    !memcmp(a.len, b.len, a.n * sizeof(size_t));
        if (!same) {
            fprintf(stderr, "iteration %zu, text:", it);
            for (size_t i = 0; i < n; i++)
                fprintf(stderr, " %02x", (uint8_t)buf[i]);
            fprintf(stderr, "\n scanner:");
            for (size_t i = 0; i < a.n; i++)
                fprintf(stderr, " [%zu,+%zu)", a.off[i], a.len[i]);
            fprintf(stderr, "\n pcre2:  ");
            for (size_t i = 0; i < b.n; i++)
                fprintf(stderr, " [%zu,+%zu)", b.off[i], b.len[i]);
            fprintf(stderr, "\n");
        }
        assert_true(same);
        /* the pieces tile the text */
        size_t at = 0;
        for (size_t i = 0; i < a.n; i++) {
            assert_int_equal(a.off[i], at);
            assert_true(a.len[i] > 0);
            at += a.len[i];
        }
        assert_int_equal(at, n);
        total_pieces += a.n;
    }
    assert_true(total_pieces > iters);
}

/* Every code point alone and after each class of neighbour: both engines agree. */
static void test_scanner_every_cp(void **state)
{
    static const uint32_t ctx[] = {0, ' ', '\'', 'a', '1', '!', '\n', 0x3000};
    static pieces_t a, b;
    char buf[16];
    for (uint32_t cp = 1; cp < 0x110000; cp += (cp < 0x30000 ? 1 : 97)) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        for (size_t k = 0; k < sizeof(ctx) / sizeof(ctx[0]); k++) {
            size_t n = 0;
            if (ctx[k])
                n += put_cp(buf + n, ctx[k]);
            n += put_cp(buf + n, cp);
            n += put_cp(buf + n, cp);
            a.n = b.n = 0;
            a.base = b.base = buf;
            assert_int_equal(tok_pretok_split(g_pretok, TOK_PRETOK_SCANNER, buf, n, collect, &a), 0);
            assert_int_equal(tok_pretok_split(g_pretok, TOK_PRETOK_PCRE2, buf, n, collect, &b), 0);
            if (a.n != b.n || memcmp(a.len, b.len, a.n * sizeof(size_t)))
                fprintf(stderr, "U+%04X after U+%04X: %zu vs %zu pieces\n", cp, ctx[k], a.n, b.n);
            assert_int_equal(a.n, b.n);
            assert_memory_equal(a.len, b.len, a.n * sizeof(size_t));
        }
    }
}

static char *nfc_plain(const char *s, size_t n, size_t *ret_n)
{
    utf8proc_uint8_t *d = NULL;
    utf8proc_ssize_t m =
        utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &d, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    assert_true(m >= 0);
    *ret_n = (size_t)m;
    return (char *)d;
}

/* NFC as tokenizers does it: utf8proc's NFC on the pieces between the marks tokenizers' older Unicode
 * data does not know (tok_unicode_nfc_inert, measured from tokenizers), which stay as they are. */
static char *nfc(const char *s, size_t n, size_t *ret_n)
{
    char *out = malloc(n * 3 + 16);
    size_t o = 0, from = 0;
    assert_non_null(out);
    for (size_t i = 0; i <= n;) {
        utf8proc_int32_t cp = -1;
        utf8proc_ssize_t l = 0;
        if (i < n) {
            l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
            assert_true(l > 0);
        }
        bool inert = false;
        for (size_t k = 0; cp >= 0 && k < sizeof(tok_unicode_nfc_inert) / sizeof(tok_unicode_nfc_inert[0]); k++)
            inert |= (uint32_t)cp >= tok_unicode_nfc_inert[k][0] && (uint32_t)cp <= tok_unicode_nfc_inert[k][1];
        if (inert || i == n) {
            size_t m;
            char *p = nfc_plain(s + from, i - from, &m);
            memcpy(out + o, p, m);
            o += m;
            free(p);
            memcpy(out + o, s + i, (size_t)l);
            o += (size_t)l;
            from = i + (size_t)l;
        }
        if (i == n)
            break;
        i += (size_t)l;
    }
    *ret_n = o;
    return out;
}

/* Whole encoder: scanner == PCRE2 ids, and decode(encode(t)) == NFC(t), with added tokens mixed in. */
static void test_encode_engines_roundtrip(void **state)
{
    static const char *specials[] = {"<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|audio_pad|>",
                                     "<|endoftext|>", "<tool_call>", "<|im_end", "|>"};
    static char buf[4 * 400 + 64];
    const om_vocab_t *v = tok_codec_vocab(g_codec);
    g_rng = 0x243F6A8885A308D3ull;
    size_t iters = 4000 * (size_t)g_scale;
    for (size_t it = 0; it < iters; it++) {
        size_t n = rnd_text(buf, 120);
        if (rnd() % 3 == 0) { /* an added token at a random character boundary */
            const char *sp = specials[rnd() % (sizeof(specials) / sizeof(specials[0]))];
            size_t at = n ? rnd() % (n + 1) : 0;
            while (at < n && ((uint8_t)buf[at] & 0xC0) == 0x80)
                at++;
            size_t sl = strlen(sp);
            memmove(buf + at + sl, buf + at, n - at + 1);
            memcpy(buf + at, sp, sl);
            n += sl;
        }
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        assert_int_equal(tok_codec_encode(g_codec, buf, n, &x, &nx), 0);
        assert_int_equal(tok_codec_encode(g_codec_pcre, buf, n, &y, &ny), 0);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, nx * sizeof(int32_t));
        char *out;
        size_t len, wn;
        assert_int_equal(om_vocab_decode(v, x, nx, false, &out, &len), 0);
        char *want = nfc(buf, n, &wn);
        if (len != wn || memcmp(out, want, len))
            fprintf(stderr, "round trip %zu:\n got  %s\n want %s\n", it, out, want);
        assert_int_equal(len, wn);
        assert_memory_equal(out, want, len);
        free(want);
        free(out);
        free(x);
        free(y);
    }
}

/* The classic BPE definition: repeatedly merge the lowest-ranked adjacent pair, leftmost first. */
static size_t naive_bpe(const om_vocab_t *v, const uint8_t *w, size_t n, int32_t *ids)
{
    const int32_t *bid = om_vocab_byte_ids(v);
    for (size_t i = 0; i < n; i++)
        ids[i] = bid[w[i]];
    for (;;) {
        int32_t best = INT32_MAX, merged = -1, m;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            int32_t r = om_vocab_merge_rank(v, ids[i], ids[i + 1], &m);
            if (r >= 0 && r < best) {
                best = r;
                at = i;
                merged = m;
            }
        }
        if (merged < 0)
            return n;
        ids[at] = merged;
        memmove(ids + at + 1, ids + at + 2, (n - at - 2) * sizeof(int32_t));
        n--;
    }
}

static void test_bpe_vs_naive(void **state)
{
    const om_vocab_t *v = tok_codec_vocab(g_codec);
    tok_bpe_scratch_t s = {0};
    static char buf[4 * 100 + 1];
    static int32_t got[512], want[512];
    g_rng = 0x13198A2E03707344ull;
    static const char *words[] = {" the", "ing", " internationalization", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                  " supercalifragilisticexpialidocious", "        ", "\n\n\n\n\n\n", "========"};
    size_t iters = 20000 * (size_t)g_scale;
    for (size_t it = 0; it < iters; it++) {
        size_t n;
        if (it % 4 == 0) { /* concatenated common words: long words take the heap path */
            n = 0;
            size_t k = 1 + rnd() % 6;
            for (size_t j = 0; j < k; j++) {
                const char *w = words[rnd() % (sizeof(words) / sizeof(words[0]))];
                memcpy(buf + n, w, strlen(w));
                n += strlen(w);
            }
        } else if (it % 4 == 1) { /* random bytes, not even UTF-8 */
            n = 1 + rnd() % 80;
            for (size_t j = 0; j < n; j++)
                buf[j] = (char)rnd();
        } else {
            n = rnd_text(buf, it % 4 == 2 ? 8 : 60);
        }
        if (!n)
            continue;
        int k = tok_bpe_word(v, (const uint8_t *)buf, n, &s, got);
        size_t wn = naive_bpe(v, (const uint8_t *)buf, n, want);
        assert_int_equal(k, (int)wn);
        assert_memory_equal(got, want, wn * sizeof(int32_t));
    }
    tok_bpe_scratch_free(&s);
}

static void encode(const char *s, size_t n, int32_t **ids, size_t *nids)
{
    assert_int_equal(tok_codec_encode(g_codec, s, n, ids, nids), 0);
}

/* Qwen splits every digit; long whitespace runs give back their last space to the next word. */
static void test_digits_and_whitespace(void **state)
{
    const om_vocab_t *v = tok_codec_vocab(g_codec);
    char buf[1024];
    g_rng = 0xA4093822299F31D0ull;
    for (int it = 0; it < 500; it++) {
        size_t n = 1 + rnd() % 60;
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)('0' + rnd() % 10);
        int32_t *ids;
        size_t k;
        encode(buf, n, &ids, &k);
        assert_int_equal(k, n);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(ids[i], om_vocab_token_id(v, buf + i, 1));
        free(ids);
    }
    int32_t *a, *sp, *b, *all;
    size_t na, nsp, nb, nall;
    encode("a", 1, &a, &na);
    encode(" b", 2, &b, &nb);
    for (size_t k = 1; k < 300; k += (k < 40 ? 1 : 37)) {
        /* "a" + k spaces + "b" == "a" | k-1 spaces | " b" */
        size_t n = 0;
        buf[n++] = 'a';
        memset(buf + n, ' ', k);
        n += k;
        buf[n++] = 'b';
        encode(buf, n, &all, &nall);
        encode(buf + 1, k - 1, &sp, &nsp);
        assert_int_equal(nall, na + nsp + nb);
        assert_memory_equal(all, a, na * sizeof(int32_t));
        assert_memory_equal(all + na, sp, nsp * sizeof(int32_t));
        assert_memory_equal(all + na + nsp, b, nb * sizeof(int32_t));
        free(all);
        free(sp);
        /* trailing run: nothing is given back */
        encode(buf, n - 1, &all, &nall);
        encode(buf + 1, k, &sp, &nsp);
        assert_int_equal(nall, na + nsp);
        assert_memory_equal(all + na, sp, nsp * sizeof(int32_t));
        free(all);
        free(sp);
    }
    free(a);
    free(b);
}

/* An added token splits the text: encode(A + tok + B) == encode(A) + [id] + encode(B). */
static void test_special_split(void **state)
{
    const om_vocab_t *v = tok_codec_vocab(g_codec);
    static char a[4 * 40 + 1], b[4 * 40 + 1], all[4 * 80 + 64];
    g_rng = 0x082EFA98EC4E6C89ull;
    for (int it = 0; it < 3000 * g_scale; it++) {
        size_t na = rnd_text(a, 30), nb = rnd_text(b, 30);
        if (memchr(a, '<', na) || memchr(b, '<', nb) || memchr(a, '|', na) || memchr(b, '|', nb))
            continue;
        const om_added_token_t *t = om_vocab_added(v, rnd() % om_vocab_n_added(v));
        memcpy(all, a, na);
        memcpy(all + na, t->content, t->len);
        memcpy(all + na + t->len, b, nb);
        int32_t *x, *y, *z;
        size_t nx, ny, nz;
        encode(all, na + t->len + nb, &x, &nx);
        encode(a, na, &y, &ny);
        encode(b, nb, &z, &nz);
        assert_int_equal(nx, ny + 1 + nz);
        assert_memory_equal(x, y, ny * sizeof(int32_t));
        assert_int_equal(x[ny], t->id);
        assert_memory_equal(x + ny + 1, z, nz * sizeof(int32_t));
        free(x);
        free(y);
        free(z);
    }
}

/* Is p[0..k) the start of some valid UTF-8 sequence? Tried by completing it (utf8proc validates). */
static bool utf8_prefix_ok(const uint8_t *p, size_t k)
{
    static const uint8_t second[] = {0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF};
    for (size_t need = k; need <= 4; need++) {
        for (size_t j = 0; j < sizeof(second); j++) {
            uint8_t b[4];
            memcpy(b, p, k);
            for (size_t i = k; i < need; i++)
                b[i] = i == 1 ? second[j] : 0x80;
            utf8proc_int32_t cp;
            if (utf8proc_iterate(b, (utf8proc_ssize_t)need, &cp) == (utf8proc_ssize_t)need)
                return true;
        }
    }
    return false;
}

/* String::from_utf8_lossy, written from its definition: each maximal prefix of a valid sequence
 * that cannot be completed becomes one U+FFFD. */
static size_t lossy_oracle(const uint8_t *r, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate(r + i, (utf8proc_ssize_t)(n - i > 4 ? 4 : n - i), &cp);
        if (l > 0) {
            memcpy(out + o, r + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
            continue;
        }
        size_t k = 1;
        while (k < 4 && i + k < n && utf8_prefix_ok(r + i, k + 1))
            k++;
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += k;
    }
    return o;
}

/* Random ids (random bytes, partial sequences) decode like from_utf8_lossy over the token bytes. */
static void test_decode_random_ids(void **state)
{
    const om_vocab_t *v = tok_codec_vocab(g_codec);
    int32_t ids[64];
    static uint8_t raw[64 * 256];
    static char want[64 * 256 * 3];
    g_rng = 0x452821E638D01377ull;
    for (int it = 0; it < 5000 * g_scale; it++) {
        size_t n = 1 + rnd() % 64, rn = 0;
        bool skip = rnd() % 2;
        for (size_t i = 0; i < n; i++) {
            /* single bytes (ids 0..255 are the byte tokens) make partial sequences likely */
            ids[i] = (int32_t)(rnd() % 3 ? rnd() % 256 : rnd() % (om_vocab_size(v) + 10));
            size_t l;
            const uint8_t *b = om_vocab_token_bytes(v, ids[i], &l);
            if (b && !(skip && om_vocab_is_special(v, ids[i]))) {
                memcpy(raw + rn, b, l);
                rn += l;
            }
        }
        char *out;
        size_t len;
        assert_int_equal(om_vocab_decode(v, ids, n, skip, &out, &len), 0);
        size_t wl = lossy_oracle(raw, rn, want);
        assert_int_equal(len, wl);
        assert_memory_equal(out, want, len);
        free(out);
    }
}

/* On every code point alone, doubled, and after starters that begin compositions: the NFC quick check
 * never calls a string stable that NFC (as tokenizers does it) would change, and tok_norm_nfc gives
 * that NFC. */
static void test_nfc_quick_check(void **state)
{
    static const uint32_t before[] = {'a', 'e', 'A', 0x1100, 0xAC00, 0xB47, 0xBC6, 0x9C7, 0x1025, 0x1B05, 0x3B1, 0x3099};
    size_t stable = 0;
    for (uint32_t cp = 0x80; cp < 0x110000; cp += (cp < 0x20000 ? 1 : 13)) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        char buf[16];
        size_t n = put_cp(buf, cp);
        stable += tok_norm_nfc_stable(buf, n);
        for (size_t k = 0; k <= sizeof(before) / sizeof(before[0]); k++) {
            size_t m = 0;
            if (k < sizeof(before) / sizeof(before[0]))
                m += put_cp(buf + m, before[k]);
            m += put_cp(buf + m, cp);
            m += put_cp(buf + m, cp);
            size_t wn;
            char *w = nfc(buf, m, &wn);
            bool whole = tok_norm_nfc_stable(buf, m);
            /* and the slow path agrees with the reference on every probe */
            char *d;
            size_t dn;
            assert_int_equal(tok_norm_nfc(buf, m, &d, &dn), 0);
            assert_int_equal(dn, wn);
            assert_memory_equal(d, w, wn);
            if (d != buf)
                free(d);
            if (whole && (wn != m || memcmp(w, buf, m)))
                fprintf(stderr, "U+%04X after U+%04X: NFC changes it\n", cp,
                        k < sizeof(before) / sizeof(before[0]) ? before[k] : 0);
            assert_false(whole && (wn != m || memcmp(w, buf, m)));
            free(w);
        }
    }
    assert_true(stable > 100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scanner_vs_pcre2),         cmocka_unit_test(test_scanner_every_cp),
        cmocka_unit_test(test_encode_engines_roundtrip), cmocka_unit_test(test_bpe_vs_naive),
        cmocka_unit_test(test_digits_and_whitespace),    cmocka_unit_test(test_special_split),
        cmocka_unit_test(test_decode_random_ids),        cmocka_unit_test(test_nfc_quick_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

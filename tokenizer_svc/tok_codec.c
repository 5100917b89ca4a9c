/* tok_codec.c: text -> token ids for byte-level BPE checkpoints, exactly as Hugging Face tokenizers:
 * added-token splitting (leftmost-longest, lstrip/rstrip/single_word) on the raw text, NFC on the rest,
 * added tokens with normalized = true on the normalized text, the Split pre-tokenizer (tok_pretok), and
 * BPE per word (tok_bpe) through a per-thread cache of frequent words. See tok_codec.h. */
#include "tok_codec.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_bpe.h"
#include "tok_norm.h"
#include "tok_pretok.h"

/* The added tokens matched in one pass, by first byte and longest first. */
typedef struct tok_codec_matcher {
    const om_added_token_t **tok; /* [n] sorted by first byte, then length descending */
    size_t n;
    uint16_t first[257];          /* tok[first[b] .. first[b + 1]) start with byte b */
} tok_codec_matcher_t;

struct tok_codec {
    om_vocab_t *vocab;
    tok_pretok_t *pretok;
    tok_codec_matcher_t raw;  /* added tokens with normalized = false: matched before NFC */
    tok_codec_matcher_t norm; /* normalized = true: matched after NFC */
    bool nfc;                 /* normalizer is NFC */
    bool prefix_space;        /* ByteLevel add_prefix_space (per word) */
    uint32_t gen;             /* unique per loaded codec: tags this codec's cache entries */
    tok_pretok_engine_t engine;
};

/* ---- per-thread word cache ---- */

#define TOK_CACHE_SLOTS 8192 /* direct mapped, per thread */
#define TOK_CACHE_KEY 46     /* bytes of the longest cached word */
#define TOK_CACHE_IDS 16     /* most ids of a cached word */

typedef struct tok_cache_entry {
    uint64_t hash;
    uint32_t gen;  /* codec generation, 0 = empty */
    uint8_t klen;  /* bytes of key */
    uint8_t nids;  /* ids */
    char key[TOK_CACHE_KEY];
    int32_t ids[TOK_CACHE_IDS];
} tok_cache_entry_t;

typedef struct tok_cache {
    tok_cache_entry_t e[TOK_CACHE_SLOTS];
    tok_bpe_scratch_t scratch;
} tok_cache_t;

static pthread_key_t tok_cache_key;
static pthread_once_t tok_cache_once = PTHREAD_ONCE_INIT;
static atomic_uint tok_codec_gen_next = 1;

static void tok_cache_destroy(void *p)
{
    tok_cache_t *c = p;
    if (c)
        tok_bpe_scratch_free(&c->scratch);
    free(c);
}

static void tok_cache_init_key(void)
{
    pthread_key_create(&tok_cache_key, tok_cache_destroy);
}

static tok_cache_t *tok_cache_get(void)
{
    tok_cache_t *c = pthread_getspecific(tok_cache_key);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c || pthread_setspecific(tok_cache_key, c)) {
            free(c);
            return NULL;
        }
    }
    return c;
}

static inline uint64_t tok_codec_hash(const uint8_t *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

/* ---- output vector ---- */

typedef struct tok_codec_out {
    int32_t *ids;
    size_t n, cap;
} tok_codec_out_t;

static int tok_codec_reserve(tok_codec_out_t *o, size_t more)
{
    if (o->n + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 64;
    while (cap < o->n + more)
        cap *= 2;
    int32_t *p = realloc(o->ids, cap * sizeof(*p));
    if (!p)
        return -ENOMEM;
    o->ids = p;
    o->cap = cap;
    return 0;
}

/* ---- loading ---- */

static int tok_codec_cmp_added(const void *a, const void *b)
{
    const om_added_token_t *x = *(const om_added_token_t *const *)a, *y = *(const om_added_token_t *const *)b;
    uint8_t fx = (uint8_t)x->content[0], fy = (uint8_t)y->content[0];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int tok_codec_matcher_init(tok_codec_matcher_t *m, const om_vocab_t *v, bool normalized)
{
    size_t na = om_vocab_n_added(v);
    m->tok = calloc(na ? na : 1, sizeof(*m->tok));
    if (!m->tok)
        return -ENOMEM;
    for (size_t i = 0; i < na; i++) {
        const om_added_token_t *a = om_vocab_added(v, i);
        if (a->normalized == normalized)
            m->tok[m->n++] = a;
    }
    if (m->n > UINT16_MAX)
        return -E2BIG;
    qsort(m->tok, m->n, sizeof(*m->tok), tok_codec_cmp_added);
    size_t j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < m->n && (uint8_t)m->tok[j]->content[0] < b)
            j++;
        m->first[b] = (uint16_t)j;
    }
    return 0;
}

int tok_codec_load(const char *model_dir, tok_codec_t **ret, char *err, size_t errlen)
{
    if (!model_dir || !ret)
        return -EINVAL;
    pthread_once(&tok_cache_once, tok_cache_init_key);
    tok_codec_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    int rc = om_vocab_load(model_dir, &c->vocab, err, errlen);
    if (!rc)
        rc = tok_pretok_new(om_vocab_pretok_regex(c->vocab), &c->pretok, err, errlen);
    if (!rc)
        rc = tok_codec_matcher_init(&c->raw, c->vocab, false);
    if (!rc)
        rc = tok_codec_matcher_init(&c->norm, c->vocab, true);
    if (rc) {
        if (rc == -ENOMEM && err && errlen)
            snprintf(err, errlen, "%s: out of memory", model_dir);
        tok_codec_free(c);
        return rc;
    }
    c->nfc = om_vocab_normalizer(c->vocab) == OM_VOCAB_NORM_NFC;
    if (c->nfc)
        tok_norm_init();
    c->prefix_space = om_vocab_pretok_prefix_space(c->vocab);
    c->gen = atomic_fetch_add(&tok_codec_gen_next, 1);
    if (!c->gen) /* wrapped: 0 marks empty cache slots */
        c->gen = atomic_fetch_add(&tok_codec_gen_next, 1);
    /* OM_TOK_PRETOK=pcre2 forces the regex engine (parity checks against the scanner). */
    const char *eng = getenv("OM_TOK_PRETOK");
    c->engine = eng && !strcmp(eng, "pcre2") ? TOK_PRETOK_PCRE2 : TOK_PRETOK_AUTO;
    *ret = c;
    return 0;
}

tok_codec_t *tok_codec_free(tok_codec_t *c)
{
    if (!c)
        return NULL;
    free(c->raw.tok);
    free(c->norm.tok);
    tok_pretok_free(c->pretok);
    om_vocab_free(c->vocab);
    free(c);
    return NULL;
}

const om_vocab_t *tok_codec_vocab(const tok_codec_t *c)
{
    return c->vocab;
}

/* ---- encoding ---- */

typedef struct tok_codec_ctx {
    const tok_codec_t *c;
    tok_cache_t *cache;
    tok_codec_out_t *out;
} tok_codec_ctx_t;

static int tok_codec_bpe(tok_codec_ctx_t *x, const uint8_t *w, size_t n)
{
    tok_cache_entry_t *e = NULL;
    uint64_t h = 0;
    if (n <= TOK_CACHE_KEY) {
        h = tok_codec_hash(w, n);
        e = &x->cache->e[h & (TOK_CACHE_SLOTS - 1)];
        if (e->gen == x->c->gen && e->hash == h && e->klen == n && !memcmp(e->key, w, n)) {
            int rc = tok_codec_reserve(x->out, e->nids);
            if (rc)
                return rc;
            memcpy(x->out->ids + x->out->n, e->ids, e->nids * sizeof(int32_t));
            x->out->n += e->nids;
            return 0;
        }
    }
    int rc = tok_codec_reserve(x->out, n);
    if (rc)
        return rc;
    int32_t *dst = x->out->ids + x->out->n;
    int k = tok_bpe_word(x->c->vocab, w, n, &x->cache->scratch, dst);
    if (k < 0)
        return k;
    x->out->n += (size_t)k;
    if (e && k <= TOK_CACHE_IDS) {
        e->gen = x->c->gen;
        e->hash = h;
        e->klen = (uint8_t)n;
        e->nids = (uint8_t)k;
        memcpy(e->key, w, n);
        memcpy(e->ids, dst, (size_t)k * sizeof(int32_t));
    }
    return 0;
}

static int tok_codec_word(void *ctx, const char *s, size_t n)
{
    tok_codec_ctx_t *x = ctx;
    if (x->c->prefix_space && s[0] != ' ') {
        uint8_t stackbuf[256];
        uint8_t *b = n + 1 <= sizeof(stackbuf) ? stackbuf : malloc(n + 1);
        if (!b)
            return -ENOMEM;
        b[0] = ' ';
        memcpy(b + 1, s, n);
        int rc = tok_codec_bpe(x, b, n + 1);
        if (b != stackbuf)
            free(b);
        return rc;
    }
    return tok_codec_bpe(x, (const uint8_t *)s, n);
}

/* Rust char::is_whitespace (the White_Space property). */
static bool tok_codec_is_ws(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* The Rust regex crate's \w, which tokenizers' single_word check uses (^\w / \w$): Alphabetic, marks,
 * decimal digits, connector punctuation and the join controls U+200C / U+200D. Letters come from
 * tokenizers' own table (tok_unicode.h, newer than utf8proc); for code points utf8proc does not know,
 * tokenizers' numbers count as digits and new marks are missed. */
static bool tok_codec_is_word(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    if (cp == 0x200C || cp == 0x200D)
        return true;
    /* Other_Alphabetic symbols: circled, parenthesized and squared Latin letters */
    if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
        (cp >= 0x1F170 && cp <= 0x1F189))
        return true;
    unsigned k = tok_pretok_classes(cp); /* tokenizers' own (newer) letters and numbers */
    if (k & TOK_PRETOK_L)
        return true;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    if (cat == UTF8PROC_CATEGORY_CN) /* newer than utf8proc: new numbers are mostly digits */
        return (k & TOK_PRETOK_N) != 0;
    switch (cat) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

static size_t tok_codec_cp_before(const uint8_t *s, size_t i, uint32_t *cp)
{
    size_t j = i;
    do
        j--;
    while (j > 0 && (s[j] & 0xC0) == 0x80);
    utf8proc_int32_t u;
    utf8proc_iterate(s + j, (utf8proc_ssize_t)(i - j), &u);
    *cp = (uint32_t)u;
    return i - j;
}

typedef int (*tok_codec_text_fn)(tok_codec_ctx_t *x, const char *s, size_t n);

/* Splits [s, s + n) on the matcher's added tokens, exactly as AddedVocabulary::find_matches: pushes
 * each token's id and hands the text between them to fn. */
static int tok_codec_split_added(tok_codec_ctx_t *x, const tok_codec_matcher_t *m, const char *s, size_t n,
                                 tok_codec_text_fn fn)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t start_off = 0;
    int rc;
    if (m->n) {
        for (size_t i = 0; i < n;) {
            uint8_t b = u[i];
            const om_added_token_t *hit = NULL;
            for (size_t k = m->first[b]; k < m->first[b + 1]; k++) {
                const om_added_token_t *a = m->tok[k];
                if (a->len <= n - i && !memcmp(s + i, a->content, a->len)) {
                    hit = a;
                    break;
                }
            }
            if (!hit) {
                i++;
                continue;
            }
            size_t start = i, stop = i + hit->len;
            if (hit->single_word) {
                uint32_t cp;
                bool start_space = start == 0 || (tok_codec_cp_before(u, start, &cp), !tok_codec_is_word(cp));
                bool stop_space = true;
                if (stop < n) {
                    utf8proc_int32_t cq;
                    utf8proc_iterate(u + stop, (utf8proc_ssize_t)(n - stop), &cq);
                    stop_space = !tok_codec_is_word((uint32_t)cq);
                }
                if (!start_space || !stop_space) { /* the match is consumed all the same */
                    i = stop;
                    continue;
                }
            }
            if (hit->lstrip) {
                size_t ns = start;
                uint32_t cp;
                while (ns > 0) {
                    size_t l = tok_codec_cp_before(u, ns, &cp);
                    if (!tok_codec_is_ws(cp))
                        break;
                    ns -= l;
                }
                start = ns > start_off ? ns : start_off;
            }
            if (hit->rstrip) {
                while (stop < n) {
                    utf8proc_int32_t cq;
                    utf8proc_ssize_t l = utf8proc_iterate(u + stop, (utf8proc_ssize_t)(n - stop), &cq);
                    if (l <= 0 || !tok_codec_is_ws((uint32_t)cq))
                        break;
                    stop += (size_t)l;
                }
            }
            if (start_off < start && (rc = fn(x, s + start_off, start - start_off)))
                return rc;
            if ((rc = tok_codec_reserve(x->out, 1)))
                return rc;
            x->out->ids[x->out->n++] = hit->id;
            start_off = stop;
            i += hit->len; /* the automaton goes on from the match's end, whatever rstrip took */
        }
    }
    if (start_off < n)
        return fn(x, s + start_off, n - start_off);
    return 0;
}

static int tok_codec_pretok(tok_codec_ctx_t *x, const char *s, size_t n)
{
    return tok_pretok_split(x->c->pretok, x->c->engine, s, n, tok_codec_word, x);
}

static int tok_codec_normalized(tok_codec_ctx_t *x, const char *s, size_t n)
{
    if (!x->c->nfc)
        return tok_codec_split_added(x, &x->c->norm, s, n, tok_codec_pretok);
    char *d;
    size_t m;
    int rc = tok_norm_nfc(s, n, &d, &m);
    if (rc)
        return rc;
    rc = tok_codec_split_added(x, &x->c->norm, d, m, tok_codec_pretok);
    if (d != s)
        free(d);
    return rc;
}

/* Strict UTF-8 check (no surrogates, no overlongs, at most U+10FFFF). */
static bool tok_codec_valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else
            return false;
        if (i + need > n || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += need;
    }
    return true;
}

int tok_codec_encode(const tok_codec_t *c, const char *text, size_t len, int32_t **ret_ids, size_t *ret_n)
{
    if (!c || (!text && len) || !ret_ids || !ret_n)
        return -EINVAL;
    if (!tok_codec_valid_utf8((const uint8_t *)text, len))
        return -EINVAL;
    tok_cache_t *cache = tok_cache_get();
    if (!cache)
        return -ENOMEM;
    tok_codec_out_t out = {0};
    tok_codec_ctx_t x = {.c = c, .cache = cache, .out = &out};
    int rc = tok_codec_reserve(&out, len / 3 + 16);
    if (!rc && len)
        rc = tok_codec_split_added(&x, &c->raw, text, len, tok_codec_normalized);
    if (rc) {
        free(out.ids);
        return rc;
    }
    *ret_ids = out.ids;
    *ret_n = out.n;
    return 0;
}

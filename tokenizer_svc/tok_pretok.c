/* tok_pretok.c: the Split pre-tokenizer: PCRE2 (any pattern) and a hand-written scanner equivalent to
 * the Qwen2 pattern (see tok_pretok.h). Both engines take \p{L}, \p{N} and \s from tok_unicode.h, the
 * classes Hugging Face tokenizers' Oniguruma uses (PCRE2 gets them written into the pattern as explicit
 * ranges), so they agree with tokenizers and with each other on every code point. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok_pretok.h"
#include "tok_unicode.h"

#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The Qwen2 pattern, as tokenizer.json writes it. */
static const char TOK_PRETOK_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct tok_pretok {
    pcre2_code *re; /* NULL when there is no pattern */
    bool scanner;   /* the pattern is TOK_PRETOK_QWEN2 */
};

/* ---- code point classes for the scanner ---- */

#define TOK_PRETOK_MAXCP 0x110000
enum { TOK_CL_L = 1, TOK_CL_N = 2, TOK_CL_WS = 4 };

static uint8_t *tok_pretok_class; /* [TOK_PRETOK_MAXCP] TOK_CL_* bits, built once */
static pthread_once_t tok_pretok_once = PTHREAD_ONCE_INIT;

static uint32_t tok_pretok_get_utf8(const uint8_t *s, size_t *len)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    if (c < 0xE0) {
        *len = 2;
        return (uint32_t)(c & 0x1F) << 6 | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *len = 3;
        return (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    }
    *len = 4;
    return (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
           (s[3] & 0x3F);
}

static void tok_pretok_mark(uint8_t *cl, const uint32_t (*r)[2], size_t n, uint8_t cls)
{
    for (size_t i = 0; i < n; i++)
        for (uint32_t cp = r[i][0]; cp <= r[i][1] && cp < TOK_PRETOK_MAXCP; cp++)
            cl[cp] |= cls;
}

#define TOK_PRETOK_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void tok_pretok_build_classes(void)
{
    uint8_t *cl = calloc(TOK_PRETOK_MAXCP, 1);
    if (!cl)
        return;
    tok_pretok_mark(cl, tok_unicode_L, TOK_PRETOK_COUNT(tok_unicode_L), TOK_CL_L);
    tok_pretok_mark(cl, tok_unicode_N, TOK_PRETOK_COUNT(tok_unicode_N), TOK_CL_N);
    tok_pretok_mark(cl, tok_unicode_S, TOK_PRETOK_COUNT(tok_unicode_S), TOK_CL_WS);
    tok_pretok_class = cl;
}

/* ---- PCRE2 ---- */

static void tok_pretok_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

typedef struct tok_pretok_sb {
    char *p;
    size_t n, cap;
    bool oom;
} tok_pretok_sb_t;

static void tok_pretok_sb_put(tok_pretok_sb_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* The ranges of a class, as PCRE2 class items (no brackets). */
static void tok_pretok_sb_ranges(tok_pretok_sb_t *b, const uint32_t (*r)[2], size_t n)
{
    char item[48];
    for (size_t i = 0; i < n; i++) {
        int k = r[i][0] == r[i][1] ? snprintf(item, sizeof(item), "\\x{%X}", r[i][0])
                                   : snprintf(item, sizeof(item), "\\x{%X}-\\x{%X}", r[i][0], r[i][1]);
        tok_pretok_sb_put(b, item, (size_t)k);
    }
}

/* Rewrites the Oniguruma pattern for PCRE2 with tokenizers' classes: \p{L}, \p{N}, \s become explicit
 * ranges (inside and outside brackets); \P{L}, \P{N}, \S outside brackets become negated classes. */
static char *tok_pretok_translate(const char *pat)
{
    static const struct {
        const char *esc;
        const uint32_t (*r)[2];
        size_t n;
        bool neg;
    } map[] = {
        {"\\p{L}", tok_unicode_L, TOK_PRETOK_COUNT(tok_unicode_L), false},
        {"\\p{N}", tok_unicode_N, TOK_PRETOK_COUNT(tok_unicode_N), false},
        {"\\s", tok_unicode_S, TOK_PRETOK_COUNT(tok_unicode_S), false},
        {"\\P{L}", tok_unicode_L, TOK_PRETOK_COUNT(tok_unicode_L), true},
        {"\\P{N}", tok_unicode_N, TOK_PRETOK_COUNT(tok_unicode_N), true},
        {"\\S", tok_unicode_S, TOK_PRETOK_COUNT(tok_unicode_S), true},
    };
    tok_pretok_sb_t b = {0};
    size_t n = strlen(pat);
    bool in_class = false;
    for (size_t i = 0; i < n;) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            size_t k;
            for (k = 0; k < sizeof(map) / sizeof(map[0]); k++) {
                size_t l = strlen(map[k].esc);
                if (!strncmp(pat + i, map[k].esc, l) && !(in_class && map[k].neg))
                    break;
            }
            if (k < sizeof(map) / sizeof(map[0])) {
                if (!in_class)
                    tok_pretok_sb_put(&b, map[k].neg ? "[^" : "[", map[k].neg ? 2 : 1);
                tok_pretok_sb_ranges(&b, map[k].r, map[k].n);
                if (!in_class)
                    tok_pretok_sb_put(&b, "]", 1);
                i += strlen(map[k].esc);
                continue;
            }
            tok_pretok_sb_put(&b, pat + i, 2);
            i += 2;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            tok_pretok_sb_put(&b, pat + i, 1);
            i++;
            if (i < n && pat[i] == '^')
                tok_pretok_sb_put(&b, pat + i++, 1);
            if (i < n && pat[i] == ']')
                tok_pretok_sb_put(&b, pat + i++, 1);
            continue;
        }
        if (c == ']' && in_class)
            in_class = false;
        tok_pretok_sb_put(&b, pat + i, 1);
        i++;
    }
    if (b.oom || !b.p) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int tok_pretok_new(const char *pattern, tok_pretok_t **ret, char *err, size_t errlen)
{
    pthread_once(&tok_pretok_once, tok_pretok_build_classes);
    tok_pretok_t *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    if (pattern) {
        char *tr = tok_pretok_translate(pattern);
        if (!tr) {
            free(p);
            return -ENOMEM;
        }
        int ec;
        PCRE2_SIZE eo;
        p->re = pcre2_compile((PCRE2_SPTR)tr, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        free(tr);
        if (!p->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            tok_pretok_seterr(err, errlen, "pre_tokenizer.pattern.Regex: %s at offset %zu", (char *)msg,
                              (size_t)eo);
            free(p);
            return -EINVAL;
        }
        pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter on failure */
        p->scanner = !strcmp(pattern, TOK_PRETOK_QWEN2) && tok_pretok_class != NULL;
    }
    *ret = p;
    return 0;
}

tok_pretok_t *tok_pretok_free(tok_pretok_t *p)
{
    if (!p)
        return NULL;
    pcre2_code_free(p->re);
    free(p);
    return NULL;
}

unsigned tok_pretok_classes(uint32_t cp)
{
    return tok_pretok_class && cp < TOK_PRETOK_MAXCP ? tok_pretok_class[cp] : 0;
}

bool tok_pretok_has_scanner(const tok_pretok_t *p)
{
    return p->scanner;
}

static int tok_pretok_split_pcre2(const tok_pretok_t *p, const char *s, size_t n, tok_pretok_fn fn, void *ctx)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->re, NULL);
    if (!md)
        return -ENOMEM;
    size_t pos = 0, from = 0;
    int rc = 0;
    while (from < n) {
        int m = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            rc = -EINVAL;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { /* empty match: not a split point; move past one character */
            size_t l;
            tok_pretok_get_utf8((const uint8_t *)s + ov[0], &l);
            from = ov[0] + l;
            continue;
        }
        if (ov[0] > pos && (rc = fn(ctx, s + pos, ov[0] - pos)))
            break;
        if ((rc = fn(ctx, s + ov[0], ov[1] - ov[0])))
            break;
        pos = from = ov[1];
    }
    if (!rc && pos < n)
        rc = fn(ctx, s + pos, n - pos);
    pcre2_match_data_free(md);
    return rc;
}

/* ---- the Qwen2 scanner ---- */

static inline uint8_t tok_pretok_cls(uint32_t cp)
{
    return tok_pretok_class[cp];
}

/* End of the run of code points with class bits in `want` (all of them) / `none` (none of them). */
static inline size_t tok_pretok_run(const uint8_t *s, size_t n, size_t i, uint8_t want, uint8_t none)
{
    while (i < n) {
        size_t l;
        uint8_t c = s[i];
        uint32_t cp = c < 0x80 ? (l = 1, c) : tok_pretok_get_utf8(s + i, &l);
        uint8_t k = tok_pretok_cls(cp);
        if ((k & want) != want || (k & none))
            break;
        i += l;
    }
    return i;
}

static inline bool tok_pretok_is_crlf(uint8_t c)
{
    return c == '\r' || c == '\n';
}

/* Length in bytes of the contraction 's 't 're 've 'm 'll 'd (any case; ſ counts as s) at s[i] == '\''. */
static size_t tok_pretok_contraction(const uint8_t *s, size_t n, size_t i)
{
    if (i + 1 >= n)
        return 0;
    uint8_t a = s[i + 1] | 0x20;
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return (s[i + 1] >= 'A' && s[i + 1] <= 'z') ? 2 : 0;
    if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) /* U+017F LATIN SMALL LETTER LONG S */
        return 3;
    if (i + 2 >= n || !(s[i + 1] >= 'A' && s[i + 1] <= 'z') || !(s[i + 2] >= 'A' && s[i + 2] <= 'z'))
        return 0;
    uint8_t b = s[i + 2] | 0x20;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* End of the match that starts at i (the pattern matches at every position). */
static size_t tok_pretok_scan_one(const uint8_t *s, size_t n, size_t i)
{
    size_t l;
    uint32_t c = tok_pretok_get_utf8(s + i, &l);
    uint8_t k = tok_pretok_cls(c);
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (c == '\'') {
        size_t m = tok_pretok_contraction(s, n, i);
        if (m)
            return i + m;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (k & TOK_CL_L)
        return tok_pretok_run(s, n, i + l, TOK_CL_L, 0);
    if (!(k & TOK_CL_N) && c != '\r' && c != '\n' && i + l < n) {
        size_t l2;
        uint32_t c2 = tok_pretok_get_utf8(s + i + l, &l2);
        if (tok_pretok_cls(c2) & TOK_CL_L)
            return tok_pretok_run(s, n, i + l + l2, TOK_CL_L, 0);
    }
    /* \p{N} */
    if (k & TOK_CL_N)
        return i + l;
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    size_t j = i;
    if (c == ' ' && i + 1 < n) {
        size_t l2;
        uint32_t c2 = tok_pretok_get_utf8(s + i + 1, &l2);
        if (!(tok_pretok_cls(c2) & (TOK_CL_WS | TOK_CL_L | TOK_CL_N)))
            j = i + 1;
    }
    if (j > i || !(k & TOK_CL_WS)) {
        j = tok_pretok_run(s, n, j, 0, TOK_CL_WS | TOK_CL_L | TOK_CL_N);
        while (j < n && tok_pretok_is_crlf(s[j]))
            j++;
        return j;
    }
    /* c is whitespace: the run [i, e) */
    size_t e = i, last_crlf = SIZE_MAX, last_start = i;
    while (e < n) {
        size_t l2;
        uint32_t c2 = s[e] < 0x80 ? (l2 = 1, s[e]) : tok_pretok_get_utf8(s + e, &l2);
        if (!(tok_pretok_cls(c2) & TOK_CL_WS))
            break;
        if (c2 == '\r' || c2 == '\n')
            last_crlf = e;
        last_start = e;
        e += l2;
    }
    /* \s*[\r\n]+ */
    if (last_crlf != SIZE_MAX)
        return last_crlf + 1;
    /* \s+(?!\S) */
    if (e == n)
        return e;
    if (last_start > i)
        return last_start;
    /* \s+ */
    return e;
}

static int tok_pretok_split_scan(const char *s, size_t n, tok_pretok_fn fn, void *ctx)
{
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        size_t e = tok_pretok_scan_one(u, n, i);
        int rc = fn(ctx, s + i, e - i);
        if (rc)
            return rc;
        i = e;
    }
    return 0;
}

int tok_pretok_split(const tok_pretok_t *p, tok_pretok_engine_t engine, const char *s, size_t n,
                     tok_pretok_fn fn, void *ctx)
{
    if (!n)
        return 0;
    if (!p->re)
        return fn(ctx, s, n);
    if (engine == TOK_PRETOK_SCANNER && !p->scanner)
        return -EINVAL;
    if (engine != TOK_PRETOK_PCRE2 && p->scanner)
        return tok_pretok_split_scan(s, n, fn, ctx);
    return tok_pretok_split_pcre2(p, s, n, fn, ctx);
}

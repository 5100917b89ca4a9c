/* tok_pretok.c: the Split pre-tokenizer: PCRE2 (any pattern, Oniguruma's \s translated) and a
 * hand-written scanner equivalent to the Qwen2 pattern (see tok_pretok.h). The scanner's Unicode
 * classes (\p{L}, \p{N}) are read out of PCRE2 itself once per process, so both engines agree on every
 * code point. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok_pretok.h"

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

/* Oniguruma's \s for UTF-8: \t \n \v \f \r, U+0085 and the Zs / Zl / Zp categories. */
static const char TOK_PRETOK_WS[] =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";

struct tok_pretok {
    pcre2_code *re; /* NULL when there is no pattern */
    bool scanner;   /* the pattern is TOK_PRETOK_QWEN2 */
};

/* ---- code point classes for the scanner ---- */

#define TOK_PRETOK_MAXCP 0x110000
enum { TOK_CL_L = 1, TOK_CL_N = 2, TOK_CL_WS = 4 };

static uint8_t *tok_pretok_class; /* [TOK_PRETOK_MAXCP] TOK_CL_* bits, built once */
static pthread_once_t tok_pretok_once = PTHREAD_ONCE_INIT;

static size_t tok_pretok_put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

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

/* Marks cls on every code point PCRE2's pattern \p{X}+ matches in a string of all code points. */
static void tok_pretok_mark(const uint8_t *all, size_t n, const uint32_t *cp_at, const char *pat, uint8_t cls)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!re)
        return;
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t pos = 0;
    while (md && pos < n && pcre2_match(re, all, n, pos, PCRE2_NO_UTF_CHECK, md, NULL) > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        for (size_t i = ov[0]; i < ov[1];) {
            size_t l;
            tok_pretok_get_utf8(all + i, &l);
            tok_pretok_class[cp_at[i]] |= cls;
            i += l;
        }
        pos = ov[1] > pos ? ov[1] : pos + 1;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

static void tok_pretok_build_classes(void)
{
    uint8_t *cl = calloc(TOK_PRETOK_MAXCP, 1);
    uint8_t *all = malloc((size_t)TOK_PRETOK_MAXCP * 4);
    uint32_t *cp_at = malloc((size_t)TOK_PRETOK_MAXCP * 4 * sizeof(uint32_t));
    if (!cl || !all || !cp_at) {
        free(cl);
        free(all);
        free(cp_at);
        return;
    }
    size_t n = 0;
    for (uint32_t cp = 0; cp < TOK_PRETOK_MAXCP; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        size_t l = tok_pretok_put_utf8(all + n, cp);
        for (size_t k = 0; k < l; k++)
            cp_at[n + k] = cp;
        n += l;
    }
    tok_pretok_class = cl;
    tok_pretok_mark(all, n, cp_at, "\\p{L}+", TOK_CL_L);
    tok_pretok_mark(all, n, cp_at, "\\p{N}+", TOK_CL_N);
    static const uint32_t ws[] = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029,
                                  0x202F, 0x205F, 0x3000};
    for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
        cl[ws[i]] |= TOK_CL_WS;
    for (uint32_t cp = 0x2000; cp <= 0x200A; cp++)
        cl[cp] |= TOK_CL_WS;
    free(all);
    free(cp_at);
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

/* Rewrites Oniguruma \s and \S into PCRE2 classes with Oniguruma's whitespace set. */
static char *tok_pretok_translate(const char *pat)
{
    size_t n = strlen(pat), cap = n * 2 + 64, o = 0;
    size_t wsn = strlen(TOK_PRETOK_WS);
    char *out = malloc(cap);
    if (!out)
        return NULL;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        if (o + wsn + 8 > cap) {
            cap = cap * 2 + wsn;
            char *p = realloc(out, cap);
            if (!p) {
                free(out);
                return NULL;
            }
            out = p;
        }
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                if (!in_class)
                    out[o++] = '[';
                if (d == 'S')
                    out[o++] = '^';
                memcpy(out + o, TOK_PRETOK_WS, wsn);
                o += wsn;
                if (!in_class)
                    out[o++] = ']';
            } else {
                out[o++] = c;
                out[o++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out[o++] = c;
            if (i + 1 < n && pat[i + 1] == '^')
                out[o++] = pat[++i];
            if (i + 1 < n && pat[i + 1] == ']')
                out[o++] = pat[++i];
            continue;
        }
        if (c == ']' && in_class)
            in_class = false;
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}

int tok_pretok_new(const char *pattern, tok_pretok_t **ret, char *err, size_t errlen)
{
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
        if (!strcmp(pattern, TOK_PRETOK_QWEN2)) {
            pthread_once(&tok_pretok_once, tok_pretok_build_classes);
            p->scanner = tok_pretok_class != NULL;
        }
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

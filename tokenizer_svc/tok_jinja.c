/* tok_jinja.c: a Jinja2 interpreter for Hugging Face chat templates (see tok_jinja.h).
 *
 * Three stages, all in this file: a lexer that reproduces jinja2's whitespace handling (trim_blocks,
 * lstrip_blocks, {%- -%}, one trailing newline dropped), a recursive-descent parser with jinja2's
 * operator precedence, and a tree-walking evaluator over Python-like values. Every render allocates
 * from one arena freed at its end; allocation failure unwinds with longjmp to the render entry point. */
#include "tok_jinja.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

/* ---- arena ------------------------------------------------------------------------------------ */

typedef struct ar_blk {
    struct ar_blk *next;
    size_t used; /* bytes */
    size_t cap;  /* bytes */
    max_align_t data[];
} ar_blk;

typedef struct arena {
    ar_blk *head;
    jmp_buf *oom; /* longjmp target on allocation failure */
} arena;

static void *s_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        ar_blk *b = malloc(sizeof(ar_blk) + cap);
        if (!b)
            longjmp(*a->oom, 1);
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void *s_zalloc(arena *a, size_t n) {
    void *p = s_alloc(a, n);
    memset(p, 0, n);
    return p;
}

static void s_arena_free(arena *a) {
    ar_blk *b = a->head;
    while (b) {
        ar_blk *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
}

static char *s_strndup(arena *a, const char *s, size_t n) {
    char *p = s_alloc(a, n + 1);
    if (n)
        memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* growable byte buffer living in an arena */
typedef struct sbuf {
    arena *a;   /* owner of p */
    char *p;    /* NUL-terminated contents (NULL while empty) */
    size_t n;   /* bytes used */
    size_t cap; /* bytes */
} sbuf;

static void s_sb_init(sbuf *b, arena *a) {
    b->a = a;
    b->p = NULL;
    b->n = b->cap = 0;
}

static void s_sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = s_alloc(b->a, cap);
        if (b->n)
            memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void s_sb_puts(sbuf *b, const char *s) { s_sb_put(b, s, strlen(s)); }
static void s_sb_putc(sbuf *b, char c) { s_sb_put(b, &c, 1); }

static void s_sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        s_sb_put(b, tmp, (size_t)n);
        return;
    }
    char *p = s_alloc(b->a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s_sb_put(b, p, (size_t)n);
}

/* ---- UTF-8 helpers ------------------------------------------------------------------------------ */

/* Decodes one code point at s[*i] (n bytes total); invalid bytes decode as themselves (0x80..0xff). */
static int32_t s_u8_next(const char *s, size_t n, size_t *i) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) {
        cp = (unsigned char)s[*i];
        k = 1;
    }
    *i += (size_t)k;
    return cp;
}

static size_t s_u8_put(char *dst, int32_t cp) {
    return (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)dst);
}

static size_t s_u8_len(const char *s, size_t n) {
    size_t i = 0, c = 0;
    while (i < n) {
        s_u8_next(s, n, &i);
        c++;
    }
    return c;
}

/* Python str.isspace() */
static bool s_py_space(int32_t c) {
    if (c < 128)
        return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f);
    return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
           c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* ---- values ------------------------------------------------------------------------------------- */

enum vt { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC, V_LOOP };

struct jlist;
struct jdict;
struct jfn;
struct loopst;

typedef struct jv {
    uint8_t t;     /* enum vt */
    uint8_t tuple; /* V_LIST: a Python tuple */
    union {
        int64_t i; /* V_INT, V_BOOL */
        double f;  /* V_FLOAT */
        struct {
            const char *p; /* UTF-8, NUL-terminated */
            size_t n;      /* bytes */
        } s;               /* V_STR; V_UNDEF: the missing name (p may be NULL) */
        struct jlist *l;
        struct jdict *d; /* V_DICT, V_NS */
        struct jfn *fn;
        struct loopst *loop;
    };
} jv;

typedef struct jlist { /* a Python list or tuple */
    size_t n, cap; /* items used / allocated */
    jv *v;         /* (cap) items */
} jlist;

typedef struct jdict { /* a Python dict: insertion-ordered, linear lookup */
    size_t n, cap; /* entries used / allocated */
    jv *k;         /* (cap) keys */
    jv *v;         /* (cap) values, v[i] belongs to k[i] */
} jdict;

static const jv s_undef = {.t = V_UNDEF};
static const jv s_none = {.t = V_NONE};

static jv s_bool(bool b) { return (jv){.t = V_BOOL, .i = b}; }
static jv s_int(int64_t i) { return (jv){.t = V_INT, .i = i}; }
static jv s_float(double f) { return (jv){.t = V_FLOAT, .f = f}; }
static jv s_str(const char *p, size_t n) { return (jv){.t = V_STR, .s = {p, n}}; }
static jv s_strz(const char *p) { return s_str(p, strlen(p)); }
static jv s_undef_named(const char *name) { return (jv){.t = V_UNDEF, .s = {name, name ? strlen(name) : 0}}; }

static jlist *s_list_new(arena *a, size_t cap) {
    jlist *l = s_zalloc(a, sizeof(*l));
    l->cap = cap;
    l->v = cap ? s_alloc(a, cap * sizeof(jv)) : NULL;
    return l;
}

static void s_list_push(arena *a, jlist *l, jv v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *nv = s_alloc(a, cap * sizeof(jv));
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

static jv s_listv(jlist *l) { return (jv){.t = V_LIST, .l = l}; }

static jdict *s_dict_new(arena *a) { return s_zalloc(a, sizeof(jdict)); }

static bool s_eq(jv a, jv b);

static jv *s_dict_find(jdict *d, jv k) {
    for (size_t i = 0; i < d->n; i++)
        if (s_eq(d->k[i], k))
            return &d->v[i];
    return NULL;
}

static jv *s_dict_finds(jdict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].s.n == n && memcmp(d->k[i].s.p, k, n) == 0)
            return &d->v[i];
    return NULL;
}

static void s_dict_set(arena *a, jdict *d, jv k, jv v) {
    jv *e = s_dict_find(d, k);
    if (e) {
        *e = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = s_alloc(a, cap * sizeof(jv)), *nv = s_alloc(a, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static jv s_dictv(jdict *d) { return (jv){.t = V_DICT, .d = d}; }

static bool s_is_num(jv v) { return v.t == V_INT || v.t == V_BOOL || v.t == V_FLOAT; }
static double s_num(jv v) { return v.t == V_FLOAT ? v.f : (double)v.i; }

static bool s_eq(jv a, jv b) {
    if (s_is_num(a) && s_is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT)
            return a.i == b.i;
        return s_num(a) == s_num(b);
    }
    if (a.t != b.t)
        return false;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE:
        return true;
    case V_STR:
        return a.s.n == b.s.n && memcmp(a.s.p, b.s.p, a.s.n) == 0;
    case V_LIST:
        if (a.tuple != b.tuple || a.l->n != b.l->n)
            return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!s_eq(a.l->v[i], b.l->v[i]))
                return false;
        return true;
    case V_DICT:
        if (a.d->n != b.d->n)
            return false;
        for (size_t i = 0; i < a.d->n; i++) {
            jv *o = s_dict_find(b.d, a.d->k[i]);
            if (!o || !s_eq(a.d->v[i], *o))
                return false;
        }
        return true;
    case V_NS:
        return a.d == b.d;
    case V_FUNC:
        return a.fn == b.fn;
    case V_LOOP:
        return a.loop == b.loop;
    }
    return false;
}

static bool s_truthy(jv v) {
    switch (v.t) {
    case V_UNDEF:
    case V_NONE:
        return false;
    case V_BOOL:
    case V_INT:
        return v.i != 0;
    case V_FLOAT:
        return v.f != 0.0;
    case V_STR:
        return v.s.n != 0;
    case V_LIST:
        return v.l->n != 0;
    case V_DICT:
        return v.d->n != 0;
    default:
        return true;
    }
}

static const char *s_type_name(jv v) {
    switch (v.t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v.tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    case V_FUNC: return "function";
    case V_LOOP: return "LoopContext";
    }
    return "object";
}

/* ---- Python formatting --------------------------------------------------------------------------- */

/* repr(float), Python's shortest round-trip form */
static void s_fmt_float(sbuf *b, double x) {
    if (isnan(x)) {
        s_sb_puts(b, "nan");
        return;
    }
    if (isinf(x)) {
        s_sb_puts(b, x < 0 ? "-inf" : "inf");
        return;
    }
    if (x == 0) {
        s_sb_puts(b, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    char tmp[64];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x)
            break;
    }
    /* tmp = [-]d[.ddd]e[+-]XX */
    const char *p = tmp;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    char digits[32];
    int nd = 0;
    while (*p && *p != 'e') {
        if (*p != '.')
            digits[nd++] = *p;
        p++;
    }
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1; /* value = 0.digits * 10^decpt */
    if (neg)
        s_sb_putc(b, '-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            s_sb_puts(b, "0.");
            for (int i = 0; i < -decpt; i++)
                s_sb_putc(b, '0');
            s_sb_puts(b, digits);
        } else if (decpt >= nd) {
            s_sb_puts(b, digits);
            for (int i = nd; i < decpt; i++)
                s_sb_putc(b, '0');
            s_sb_puts(b, ".0");
        } else {
            s_sb_put(b, digits, (size_t)decpt);
            s_sb_putc(b, '.');
            s_sb_puts(b, digits + decpt);
        }
    } else {
        s_sb_putc(b, digits[0]);
        if (nd > 1) {
            s_sb_putc(b, '.');
            s_sb_puts(b, digits + 1);
        }
        int e = decpt - 1;
        s_sb_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

static bool s_py_printable(int32_t c) {
    if (c == ' ')
        return true;
    if (c < 0x20 || c == 0x7f)
        return false;
    if (c < 0x7f)
        return true;
    utf8proc_category_t cat = utf8proc_category(c);
    switch (cat) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

/* repr(str) */
static void s_fmt_repr_str(sbuf *b, const char *s, size_t n) {
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    s_sb_putc(b, q);
    size_t i = 0;
    while (i < n) {
        size_t st = i;
        int32_t c = s_u8_next(s, n, &i);
        if (c == q || c == '\\') {
            s_sb_putc(b, '\\');
            s_sb_putc(b, (char)c);
        } else if (c == '\t')
            s_sb_puts(b, "\\t");
        else if (c == '\n')
            s_sb_puts(b, "\\n");
        else if (c == '\r')
            s_sb_puts(b, "\\r");
        else if (s_py_printable(c))
            s_sb_put(b, s + st, i - st);
        else if (c < 0x100)
            s_sb_printf(b, "\\x%02x", c);
        else if (c < 0x10000)
            s_sb_printf(b, "\\u%04x", c);
        else
            s_sb_printf(b, "\\U%08x", c);
    }
    s_sb_putc(b, q);
}

static void s_fmt(sbuf *b, jv v, bool repr);

static void s_fmt_seq(sbuf *b, jv v) {
    s_sb_putc(b, v.tuple ? '(' : '[');
    for (size_t i = 0; i < v.l->n; i++) {
        if (i)
            s_sb_puts(b, ", ");
        s_fmt(b, v.l->v[i], true);
    }
    if (v.tuple && v.l->n == 1)
        s_sb_putc(b, ',');
    s_sb_putc(b, v.tuple ? ')' : ']');
}

static void s_fmt_dict(sbuf *b, jdict *d) {
    s_sb_putc(b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            s_sb_puts(b, ", ");
        s_fmt(b, d->k[i], true);
        s_sb_puts(b, ": ");
        s_fmt(b, d->v[i], true);
    }
    s_sb_putc(b, '}');
}

/* str(v) (repr=false) or repr(v) */
static void s_fmt(sbuf *b, jv v, bool repr) {
    switch (v.t) {
    case V_UNDEF:
        if (repr)
            s_sb_puts(b, "Undefined");
        break;
    case V_NONE:
        s_sb_puts(b, "None");
        break;
    case V_BOOL:
        s_sb_puts(b, v.i ? "True" : "False");
        break;
    case V_INT:
        s_sb_printf(b, "%lld", (long long)v.i);
        break;
    case V_FLOAT:
        s_fmt_float(b, v.f);
        break;
    case V_STR:
        if (repr)
            s_fmt_repr_str(b, v.s.p, v.s.n);
        else
            s_sb_put(b, v.s.p, v.s.n);
        break;
    case V_LIST:
        s_fmt_seq(b, v);
        break;
    case V_DICT:
        s_fmt_dict(b, v.d);
        break;
    case V_NS:
        s_sb_puts(b, "<Namespace ");
        s_fmt_dict(b, v.d);
        s_sb_putc(b, '>');
        break;
    case V_FUNC:
        s_sb_puts(b, "<function>");
        break;
    case V_LOOP:
        s_sb_puts(b, "<LoopContext>");
        break;
    }
}

/* ---- lexer -------------------------------------------------------------------------------------- */

enum tk { T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct tok {
    uint8_t t;    /* enum tk */
    int line;     /* 1-based template line */
    const char *s; /* T_DATA/T_NAME/T_STRING/T_OP text (NUL-terminated, strings unescaped) */
    size_t n;     /* bytes of s */
    int64_t i;    /* T_INT */
    double f;     /* T_FLOAT */
} tok;

typedef struct lexer {
    arena *a;        /* tokens and their texts */
    const char *src; /* normalized source */
    size_t n;        /* bytes */
    size_t line_pos; /* byte offset whose line is line_no */
    int line_no;     /* 1-based */
    tok *v;          /* (cap) tokens */
    size_t nv, cap;  /* tokens used / allocated */
    char *err;       /* caller's error buffer */
    size_t errlen;   /* bytes of err */
} lexer;

static int s_line_at(lexer *L, size_t pos) {
    if (pos < L->line_pos) {
        L->line_pos = 0;
        L->line_no = 1;
    }
    for (size_t i = L->line_pos; i < pos && i < L->n; i++)
        if (L->src[i] == '\n')
            L->line_no++;
    L->line_pos = pos;
    return L->line_no;
}

/* writes "chat template line LINE: " and the formatted message into err (errlen bytes; none: nothing) */
static void s_errmsg(char *err, size_t errlen, int line, const char *fmt, va_list ap) {
    if (!err || !errlen)
        return;
    int k = snprintf(err, errlen, "chat template line %d: ", line);
    if (k >= 0 && (size_t)k < errlen)
        vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
}

static int s_lex_fail(lexer *L, size_t pos, const char *fmt, ...) {
    if (L->err && L->errlen) {
        va_list ap;
        va_start(ap, fmt);
        s_errmsg(L->err, L->errlen, s_line_at(L, pos), fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static tok *s_lex_push(lexer *L, uint8_t t, size_t pos, const char *s, size_t n) {
    if (L->nv == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        tok *nv = s_alloc(L->a, cap * sizeof(tok));
        if (L->nv)
            memcpy(nv, L->v, L->nv * sizeof(tok));
        L->v = nv;
        L->cap = cap;
    }
    tok *k = &L->v[L->nv++];
    memset(k, 0, sizeof(*k));
    k->t = t;
    k->line = s_line_at(L, pos);
    k->s = s ? s_strndup(L->a, s, n) : "";
    k->n = s ? n : 0;
    return k;
}

static bool s_is_ws_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Python str.rstrip(): length of s without trailing Unicode whitespace */
static size_t s_rstrip_len(const char *s, size_t n) {
    size_t i = 0, keep = 0;
    while (i < n) {
        int32_t c = s_u8_next(s, n, &i);
        if (!s_py_space(c))
            keep = i;
    }
    return keep;
}

static bool s_all_space(const char *s, size_t n) {
    size_t i = 0;
    while (i < n)
        if (!s_py_space(s_u8_next(s, n, &i)))
            return false;
    return true;
}

static size_t s_skip_space(const char *s, size_t n, size_t i) {
    while (i < n) {
        size_t j = i;
        if (!s_py_space(s_u8_next(s, n, &j)))
            break;
        i = j;
    }
    return i;
}

/* Unescapes a Python string literal body (jinja2: unicode-escape decoding). */
static char *s_unescape(arena *a, const char *s, size_t n, size_t *ret_n) {
    char *o = s_alloc(a, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char c = s[++i];
        int32_t cp = -1;
        int hex = 0;
        switch (c) {
        case '\n': continue;
        case '\\': o[k++] = '\\'; continue;
        case '\'': o[k++] = '\''; continue;
        case '"': o[k++] = '"'; continue;
        case 'a': o[k++] = '\a'; continue;
        case 'b': o[k++] = '\b'; continue;
        case 'f': o[k++] = '\f'; continue;
        case 'n': o[k++] = '\n'; continue;
        case 'r': o[k++] = '\r'; continue;
        case 't': o[k++] = '\t'; continue;
        case 'v': o[k++] = '\v'; continue;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default:
            if (c >= '0' && c <= '7') {
                cp = 0;
                int m = 0;
                while (m < 3 && i < n && s[i] >= '0' && s[i] <= '7') {
                    cp = cp * 8 + (s[i] - '0');
                    i++;
                    m++;
                }
                i--;
                k += s_u8_put(o + k, cp);
                continue;
            }
            o[k++] = '\\';
            o[k++] = c;
            continue;
        }
        cp = 0;
        int m;
        for (m = 0; m < hex && i + 1 < n; m++) {
            char h = s[i + 1];
            int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
            if (d < 0)
                break;
            cp = cp * 16 + d;
            i++;
        }
        if (m < hex || cp > 0x10ffff) {
            o[k++] = '\\';
            o[k++] = c;
            continue;
        }
        k += s_u8_put(o + k, cp);
    }
    o[k] = 0;
    *ret_n = k;
    return o;
}

static const char *const s_ops2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char s_ops1[] = "+-/*%~[](){}><=.:|,;";

/* Tokenizes the inside of a {{ }} or {% %} tag starting at *pos; stops after the end tag. */
static int s_lex_tag(lexer *L, size_t *pos, bool block) {
    const char *s = L->src;
    size_t n = L->n, i = *pos;
    char bal[256];
    int nbal = 0;
    for (;;) {
        while (i < n && s_is_ws_byte(s[i]))
            i++;
        if (i >= n)
            return s_lex_fail(L, i, "unexpected end of template, expected end of %s tag", block ? "block" : "print");
        if (nbal == 0) {
            if (block) {
                if (s[i] == '+' && strncmp(s + i + 1, "%}", 2) == 0) {
                    s_lex_push(L, T_BLOCK_END, i, NULL, 0);
                    *pos = i + 3;
                    return 0;
                }
                if (s[i] == '-' && strncmp(s + i + 1, "%}", 2) == 0) {
                    s_lex_push(L, T_BLOCK_END, i, NULL, 0);
                    *pos = s_skip_space(s, n, i + 3);
                    return 0;
                }
                if (strncmp(s + i, "%}", 2) == 0) {
                    s_lex_push(L, T_BLOCK_END, i, NULL, 0);
                    i += 2;
                    if (i < n && s[i] == '\n')
                        i++;
                    *pos = i;
                    return 0;
                }
            } else {
                if (s[i] == '-' && strncmp(s + i + 1, "}}", 2) == 0) {
                    s_lex_push(L, T_VAR_END, i, NULL, 0);
                    *pos = s_skip_space(s, n, i + 3);
                    return 0;
                }
                if (strncmp(s + i, "}}", 2) == 0) {
                    s_lex_push(L, T_VAR_END, i, NULL, 0);
                    *pos = i + 2;
                    return 0;
                }
            }
        }
        char c = s[i];
        if (c >= '0' && c <= '9') {
            size_t j = i;
            bool is_float = false;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                j++;
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                is_float = true;
                j++;
                while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                    j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t e = j + 1;
                if (e < n && (s[e] == '+' || s[e] == '-'))
                    e++;
                if (e < n && s[e] >= '0' && s[e] <= '9') {
                    is_float = true;
                    j = e;
                    while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                        j++;
                }
            }
            char buf[128];
            size_t bn = 0;
            for (size_t q = i; q < j && bn < sizeof(buf) - 1; q++)
                if (s[q] != '_')
                    buf[bn++] = s[q];
            buf[bn] = 0;
            tok *k = s_lex_push(L, is_float ? T_FLOAT : T_INT, i, s + i, j - i);
            if (is_float)
                k->f = strtod(buf, NULL);
            else {
                errno = 0;
                k->i = strtoll(buf, NULL, 10);
                if (errno)
                    return s_lex_fail(L, i, "integer literal '%s' out of range", buf);
            }
            i = j;
            continue;
        }
        if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (unsigned char)c >= 0x80) {
            size_t j = i;
            while (j < n && (s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                             (s[j] >= '0' && s[j] <= '9') || (unsigned char)s[j] >= 0x80))
                j++;
            s_lex_push(L, T_NAME, i, s + i, j - i);
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) {
                if (s[j] == '\\')
                    j++;
                j++;
            }
            if (j >= n)
                return s_lex_fail(L, i, "unexpected end of string literal");
            size_t un;
            char *u = s_unescape(L->a, s + i + 1, j - i - 1, &un);
            tok *k = s_lex_push(L, T_STRING, i, NULL, 0);
            k->s = u;
            k->n = un;
            i = j + 1;
            continue;
        }
        size_t oplen = 0;
        for (size_t q = 0; q < sizeof(s_ops2) / sizeof(s_ops2[0]); q++)
            if (i + 1 < n && s[i] == s_ops2[q][0] && s[i + 1] == s_ops2[q][1])
                oplen = 2;
        if (!oplen && strchr(s_ops1, c))
            oplen = 1;
        if (!oplen)
            return s_lex_fail(L, i, "unexpected char '%c'", c);
        if (oplen == 1) {
            if (c == '(' || c == '[' || c == '{') {
                if (nbal >= (int)sizeof(bal))
                    return s_lex_fail(L, i, "brackets nested too deeply");
                bal[nbal++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (c == ')' || c == ']' || c == '}') {
                if (nbal == 0)
                    return s_lex_fail(L, i, "unexpected '%c'", c);
                if (bal[nbal - 1] != c)
                    return s_lex_fail(L, i, "unexpected '%c', expected '%c'", c, bal[nbal - 1]);
                nbal--;
            }
        }
        s_lex_push(L, T_OP, i, s + i, oplen);
        i += oplen;
    }
}

static int s_lex(lexer *L) {
    const char *s = L->src;
    size_t n = L->n, pos = 0;
    while (pos < n) {
        size_t idx = pos;
        int kind = 0; /* 1 var, 2 block, 3 comment */
        for (; idx + 1 < n; idx++) {
            if (s[idx] != '{')
                continue;
            char c = s[idx + 1];
            if (c == '{') kind = 1;
            else if (c == '%') kind = 2;
            else if (c == '#') kind = 3;
            if (kind)
                break;
        }
        if (!kind) {
            s_lex_push(L, T_DATA, pos, s + pos, n - pos);
            break;
        }
        char sign = (idx + 2 < n && (s[idx + 2] == '-' || s[idx + 2] == '+')) ? s[idx + 2] : 0;
        /* raw block */
        bool raw = false;
        size_t after_raw = 0; /* first byte of the raw body */
        if (kind == 2) {
            size_t j = idx + 2 + (sign ? 1 : 0);
            while (j < n && s_is_ws_byte(s[j]))
                j++;
            if (strncmp(s + j, "raw", 3) == 0) {
                j += 3;
                while (j < n && s_is_ws_byte(s[j]))
                    j++;
                bool eat = j < n && s[j] == '-'; /* jinja2 accepts "raw -%}" and "raw %}", not "raw +%}" */
                if (eat)
                    j++;
                if (strncmp(s + j, "%}", 2) == 0) {
                    raw = true;
                    after_raw = eat ? s_skip_space(s, n, j + 2) : j + 2;
                }
            }
        }
        size_t tlen = idx - pos;
        if (sign == '-')
            tlen = s_rstrip_len(s + pos, tlen);
        else if (sign != '+' && kind != 1) {
            size_t l_pos = 0;
            for (size_t q = pos; q < idx; q++)
                if (s[q] == '\n')
                    l_pos = q + 1 - pos;
            bool line_starting = pos == 0 || s[pos - 1] == '\n';
            if ((l_pos > 0 || line_starting) && l_pos < tlen && s_all_space(s + pos + l_pos, tlen - l_pos))
                tlen = l_pos;
        }
        if (tlen)
            s_lex_push(L, T_DATA, pos, s + pos, tlen);
        if (raw) {
            /* body up to {%[-+]? endraw [-+]?%} */
            size_t j = after_raw;
            for (; j + 1 < n; j++) {
                if (s[j] != '{' || s[j + 1] != '%')
                    continue;
                size_t q = j + 2;
                char sg = (q < n && (s[q] == '-' || s[q] == '+')) ? s[q] : 0;
                if (sg)
                    q++;
                while (q < n && s_is_ws_byte(s[q]))
                    q++;
                if (strncmp(s + q, "endraw", 6) != 0)
                    continue;
                q += 6;
                while (q < n && s_is_ws_byte(s[q]))
                    q++;
                char esg = 0;
                if (q < n && (s[q] == '-' || s[q] == '+'))
                    esg = s[q++];
                if (strncmp(s + q, "%}", 2) != 0)
                    continue;
                q += 2;
                size_t blen = j - after_raw;
                if (sg == '-')
                    blen = s_rstrip_len(s + after_raw, blen);
                else if (sg != '+') {
                    size_t l_pos = 0;
                    for (size_t z = after_raw; z < j; z++)
                        if (s[z] == '\n')
                            l_pos = z + 1 - after_raw;
                    bool ls = s[after_raw - 1] == '\n';
                    if ((l_pos > 0 || ls) && l_pos < blen && s_all_space(s + after_raw + l_pos, blen - l_pos))
                        blen = l_pos;
                }
                if (blen)
                    s_lex_push(L, T_DATA, after_raw, s + after_raw, blen);
                if (esg == '-')
                    q = s_skip_space(s, n, q);
                else if (esg != '+' && q < n && s[q] == '\n')
                    q++;
                pos = q;
                break;
            }
            if (j + 1 >= n)
                return s_lex_fail(L, idx, "Missing end of raw directive");
            continue;
        }
        size_t p = idx + 2 + (sign ? 1 : 0);
        if (kind == 3) {
            if (p >= n) { /* jinja2 quirk: an opening {# at the very end is dropped, not an error */
                pos = n;
                continue;
            }
            size_t j = p;
            for (; j + 1 < n; j++) {
                if (s[j] == '+' && j + 2 < n && s[j + 1] == '#' && s[j + 2] == '}') {
                    pos = j + 3;
                    break;
                }
                if (s[j] == '-' && j + 2 < n && s[j + 1] == '#' && s[j + 2] == '}') {
                    pos = s_skip_space(s, n, j + 3);
                    break;
                }
                if (s[j] == '#' && s[j + 1] == '}') {
                    pos = j + 2;
                    if (pos < n && s[pos] == '\n')
                        pos++;
                    break;
                }
            }
            if (j + 1 >= n)
                return s_lex_fail(L, idx, "Missing end of comment tag");
            continue;
        }
        s_lex_push(L, kind == 1 ? T_VAR_BEGIN : T_BLOCK_BEGIN, idx, NULL, 0);
        int r = s_lex_tag(L, &p, kind == 2);
        if (r < 0)
            return r;
        pos = p;
    }
    s_lex_push(L, T_EOF, n, NULL, 0);
    return 0;
}

/* ---- AST ---------------------------------------------------------------------------------------- */

enum nk {
    /* statements */
    S_BODY, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_CALLBLOCK, S_BREAK, S_CONTINUE,
    S_FILTERBLOCK, S_WITH,
    /* expressions */
    E_CONST, E_NAME, E_LIST, E_TUPLE, E_DICT, E_GETATTR, E_GETITEM, E_SLICE, E_CALL, E_FILTER, E_TEST,
    E_NEG, E_POS, E_NOT, E_BIN, E_AND, E_OR, E_CMP, E_COND, E_CONCAT, E_HOLE, E_NSREF
};

enum op { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE,
          OP_IN, OP_NOTIN };

typedef struct node node;
typedef struct nlist {
    node **v;      /* (cap) child nodes */
    size_t n, cap; /* used / allocated */
} nlist;

struct node {
    uint8_t k;  /* enum nk */
    int line;   /* template line */
    int op;     /* E_BIN: enum op; E_TEST: negated */
    node *a, *b, *c, *d, *e;
    nlist l1, l2;        /* children: statements, args, keys/values, if conditions/bodies */
    const char *name;    /* names, attribute names, filter/test names */
    size_t nlen;         /* bytes of name */
    const char **names;  /* kwarg / parameter names */
    size_t nnames;
    int *ops;            /* E_CMP: one enum op per operand in l1 */
    jv v;                /* E_CONST */
};

static void s_nl_push(arena *a, nlist *l, node *x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        node **nv = s_alloc(a, cap * sizeof(node *));
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof(node *));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static void s_names_push(arena *a, node *x, const char *name) {
    const char **nv = s_alloc(a, (x->nnames + 1) * sizeof(char *));
    if (x->nnames)
        memcpy(nv, x->names, x->nnames * sizeof(char *));
    nv[x->nnames++] = name;
    x->names = nv;
}

/* ---- parser ------------------------------------------------------------------------------------- */

typedef struct parser {
    arena *a;      /* AST allocations (the template's arena) */
    tok *v;        /* (n) tokens from the lexer */
    size_t n, i;   /* token count, index of the current token */
    char *err;
    size_t errlen;
    int failed;
    int depth; /* recursion depth of expressions and nested blocks */
} parser;

#define P_MAX_DEPTH 200

#define P_CHECK(p)                                                                                          \
    do {                                                                                                    \
        if ((p)->failed)                                                                                    \
            return NULL;                                                                                    \
    } while (0)

static node *s_pfail(parser *p, const char *fmt, ...) {
    if (p->failed)
        return NULL;
    p->failed = 1;
    tok *t = &p->v[p->i < p->n ? p->i : p->n - 1];
    va_list ap;
    va_start(ap, fmt);
    s_errmsg(p->err, p->errlen, t->line, fmt, ap);
    va_end(ap);
    return NULL;
}

static tok *s_cur(parser *p) { return &p->v[p->i]; }
static tok *s_look(parser *p) { return &p->v[p->i + 1 < p->n ? p->i + 1 : p->n - 1]; }
static void s_next(parser *p) {
    if (p->i + 1 < p->n)
        p->i++;
}
static bool s_is_op(tok *t, const char *op) { return t->t == T_OP && strcmp(t->s, op) == 0; }
static bool s_is_name(tok *t, const char *nm) { return t->t == T_NAME && strcmp(t->s, nm) == 0; }

static const char *s_tok_desc(tok *t) {
    switch (t->t) {
    case T_DATA: return "template data";
    case T_VAR_BEGIN: return "begin of print statement";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_BEGIN: return "begin of statement block";
    case T_BLOCK_END: return "end of statement block";
    case T_EOF: return "end of template";
    default: return t->s;
    }
}

static bool s_expect_op(parser *p, const char *op) {
    if (p->failed)
        return false;
    if (!s_is_op(s_cur(p), op)) {
        s_pfail(p, "expected token '%s', got '%s'", op, s_tok_desc(s_cur(p)));
        return false;
    }
    s_next(p);
    return true;
}

static bool s_expect_t(parser *p, uint8_t t, const char *what) {
    if (p->failed)
        return false;
    if (s_cur(p)->t != t) {
        s_pfail(p, "expected %s, got '%s'", what, s_tok_desc(s_cur(p)));
        return false;
    }
    s_next(p);
    return true;
}

static node *s_node(parser *p, uint8_t k, int line) {
    node *x = s_zalloc(p->a, sizeof(node));
    x->k = k;
    x->line = line;
    return x;
}

static node *s_parse_expression(parser *p, bool with_condexpr);
static node *s_parse_unary(parser *p, bool with_filter);
static node *s_parse_primary(parser *p);
static node *s_parse_postfix(parser *p, node *x);
static node *s_parse_filter_expr(parser *p, node *x);
static node *s_parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end, bool explicit_parens);
static nlist s_subparse(parser *p, const char *const *end_tokens);
static nlist s_subparse_body(parser *p, const char *const *end_tokens);

static node *s_parse_condexpr(parser *p);
static node *s_parse_or(parser *p);

static node *s_parse_expression(parser *p, bool with_condexpr) {
    if (++p->depth > P_MAX_DEPTH)
        return s_pfail(p, "expressions or blocks nested too deeply");
    node *x = with_condexpr ? s_parse_condexpr(p) : s_parse_or(p);
    p->depth--;
    return x;
}

static node *s_parse_condexpr(parser *p) {
    int line = s_cur(p)->line;
    node *e1 = s_parse_or(p);
    P_CHECK(p);
    while (s_is_name(s_cur(p), "if")) {
        s_next(p);
        node *e2 = s_parse_or(p);
        P_CHECK(p);
        node *e3 = NULL;
        if (s_is_name(s_cur(p), "else")) {
            s_next(p);
            e3 = s_parse_condexpr(p);
            P_CHECK(p);
        }
        node *x = s_node(p, E_COND, line);
        x->a = e1;
        x->b = e2;
        x->c = e3;
        e1 = x;
    }
    return e1;
}

static node *s_parse_and(parser *p);
static node *s_parse_not(parser *p);
static node *s_parse_compare(parser *p);

/* `operand (word operand)*`, left-associative, as nodes of kind k (E_OR, E_AND) */
static node *s_parse_logic(parser *p, const char *word, uint8_t k, node *(*operand)(parser *)) {
    node *l = operand(p);
    P_CHECK(p);
    while (s_is_name(s_cur(p), word)) {
        int line = s_cur(p)->line;
        s_next(p);
        node *r = operand(p);
        P_CHECK(p);
        node *x = s_node(p, k, line);
        x->a = l;
        x->b = r;
        l = x;
    }
    return l;
}

static node *s_parse_or(parser *p) { return s_parse_logic(p, "or", E_OR, s_parse_and); }
static node *s_parse_and(parser *p) { return s_parse_logic(p, "and", E_AND, s_parse_not); }

static node *s_parse_not(parser *p) {
    if (s_is_name(s_cur(p), "not")) {
        int line = s_cur(p)->line;
        s_next(p);
        node *x = s_node(p, E_NOT, line);
        if (++p->depth > P_MAX_DEPTH)
            return s_pfail(p, "expressions or blocks nested too deeply");
        x->a = s_parse_not(p);
        p->depth--;
        P_CHECK(p);
        return x;
    }
    return s_parse_compare(p);
}

static node *s_parse_math1(parser *p);

static node *s_parse_compare(parser *p) {
    int line = s_cur(p)->line;
    node *e = s_parse_math1(p);
    P_CHECK(p);
    node *cmp = NULL;
    for (;;) {
        tok *t = s_cur(p);
        int op = -1;
        if (t->t == T_OP) {
            if (!strcmp(t->s, "==")) op = OP_EQ;
            else if (!strcmp(t->s, "!=")) op = OP_NE;
            else if (!strcmp(t->s, "<")) op = OP_LT;
            else if (!strcmp(t->s, "<=")) op = OP_LE;
            else if (!strcmp(t->s, ">")) op = OP_GT;
            else if (!strcmp(t->s, ">=")) op = OP_GE;
            if (op >= 0)
                s_next(p);
        } else if (s_is_name(t, "in")) {
            op = OP_IN;
            s_next(p);
        } else if (s_is_name(t, "not") && s_is_name(s_look(p), "in")) {
            op = OP_NOTIN;
            s_next(p);
            s_next(p);
        }
        if (op < 0)
            break;
        if (!cmp) {
            cmp = s_node(p, E_CMP, line);
            cmp->a = e;
        }
        node *r = s_parse_math1(p);
        P_CHECK(p);
        s_nl_push(p->a, &cmp->l1, r);
        int *ops = s_alloc(p->a, cmp->l1.n * sizeof(int));
        if (cmp->l1.n > 1)
            memcpy(ops, cmp->ops, (cmp->l1.n - 1) * sizeof(int));
        ops[cmp->l1.n - 1] = op;
        cmp->ops = ops;
    }
    return cmp ? cmp : e;
}

static node *s_bin(parser *p, int op, node *l, node *r, int line) {
    node *x = s_node(p, E_BIN, line);
    x->op = op;
    x->a = l;
    x->b = r;
    return x;
}

static node *s_parse_concat(parser *p);
static node *s_parse_math2(parser *p);
static node *s_parse_pow(parser *p);

typedef struct binop {
    const char *s; /* operator token */
    int op;        /* OP_* */
} binop;

/* `operand (OP operand)*` for the operators of ops ({NULL} ends it), left-associative, as E_BIN nodes */
static node *s_parse_binary(parser *p, const binop *ops, node *(*operand)(parser *)) {
    node *l = operand(p);
    P_CHECK(p);
    for (;;) {
        tok *t = s_cur(p);
        int op = -1;
        for (const binop *o = ops; o->s && op < 0; o++)
            if (s_is_op(t, o->s))
                op = o->op;
        if (op < 0)
            break;
        s_next(p);
        node *r = operand(p);
        P_CHECK(p);
        l = s_bin(p, op, l, r, t->line);
    }
    return l;
}

static node *s_parse_math1(parser *p) {
    static const binop ops[] = {{"+", OP_ADD}, {"-", OP_SUB}, {NULL, 0}};
    return s_parse_binary(p, ops, s_parse_concat);
}

static node *s_parse_concat(parser *p) {
    int line = s_cur(p)->line;
    node *first = s_parse_math2(p);
    P_CHECK(p);
    if (!s_is_op(s_cur(p), "~"))
        return first;
    node *x = s_node(p, E_CONCAT, line);
    s_nl_push(p->a, &x->l1, first);
    while (s_is_op(s_cur(p), "~")) {
        s_next(p);
        node *r = s_parse_math2(p);
        P_CHECK(p);
        s_nl_push(p->a, &x->l1, r);
    }
    return x;
}

static node *s_parse_math2(parser *p) {
    static const binop ops[] = {{"*", OP_MUL}, {"/", OP_DIV}, {"//", OP_FLOORDIV}, {"%", OP_MOD}, {NULL, 0}};
    return s_parse_binary(p, ops, s_parse_pow);
}

static node *s_parse_unary_filtered(parser *p) { return s_parse_unary(p, true); }

static node *s_parse_pow(parser *p) {
    static const binop ops[] = {{"**", OP_POW}, {NULL, 0}};
    return s_parse_binary(p, ops, s_parse_unary_filtered);
}

static node *s_parse_unary(parser *p, bool with_filter) {
    tok *t = s_cur(p);
    node *x;
    if (s_is_op(t, "-") || s_is_op(t, "+")) {
        s_next(p);
        x = s_node(p, t->s[0] == '-' ? E_NEG : E_POS, t->line);
        if (++p->depth > P_MAX_DEPTH)
            return s_pfail(p, "expressions or blocks nested too deeply");
        x->a = s_parse_unary(p, false);
        p->depth--;
        P_CHECK(p);
    } else {
        x = s_parse_primary(p);
        P_CHECK(p);
    }
    x = s_parse_postfix(p, x);
    P_CHECK(p);
    if (with_filter)
        x = s_parse_filter_expr(p, x);
    return x;
}

static node *s_const(parser *p, jv v, int line) {
    node *x = s_node(p, E_CONST, line);
    x->v = v;
    return x;
}

/* a list [a, b, ...] or (dict) a dict {k: v, ...} literal after its opening bracket, up to and
 * including the closing one; items in l1 (dict: keys in l1, values in l2), a trailing comma allowed */
static node *s_parse_display(parser *p, bool dict, int line) {
    const char *close = dict ? "}" : "]";
    node *x = s_node(p, dict ? E_DICT : E_LIST, line);
    while (!s_is_op(s_cur(p), close)) {
        if (x->l1.n && !s_expect_op(p, ","))
            return NULL;
        if (s_is_op(s_cur(p), close))
            break;
        node *k = s_parse_expression(p, true);
        P_CHECK(p);
        node *v = NULL;
        if (dict) {
            if (!s_expect_op(p, ":"))
                return NULL;
            v = s_parse_expression(p, true);
            P_CHECK(p);
        }
        s_nl_push(p->a, &x->l1, k);
        if (dict)
            s_nl_push(p->a, &x->l2, v);
    }
    s_expect_op(p, close);
    P_CHECK(p);
    return x;
}

static node *s_parse_primary(parser *p) {
    tok *t = s_cur(p);
    if (t->t == T_NAME) {
        s_next(p);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True"))
            return s_const(p, s_bool(true), t->line);
        if (!strcmp(t->s, "false") || !strcmp(t->s, "False"))
            return s_const(p, s_bool(false), t->line);
        if (!strcmp(t->s, "none") || !strcmp(t->s, "None"))
            return s_const(p, s_none, t->line);
        node *x = s_node(p, E_NAME, t->line);
        x->name = t->s;
        x->nlen = t->n;
        return x;
    }
    if (t->t == T_STRING) {
        s_next(p);
        if (s_cur(p)->t != T_STRING)
            return s_const(p, s_str(t->s, t->n), t->line);
        sbuf b;
        s_sb_init(&b, p->a);
        s_sb_put(&b, t->s, t->n);
        while (s_cur(p)->t == T_STRING) {
            s_sb_put(&b, s_cur(p)->s, s_cur(p)->n);
            s_next(p);
        }
        return s_const(p, s_str(b.p, b.n), t->line);
    }
    if (t->t == T_INT) {
        s_next(p);
        return s_const(p, s_int(t->i), t->line);
    }
    if (t->t == T_FLOAT) {
        s_next(p);
        return s_const(p, s_float(t->f), t->line);
    }
    if (s_is_op(t, "(")) {
        s_next(p);
        node *x = s_parse_tuple(p, false, true, NULL, true);
        P_CHECK(p);
        s_expect_op(p, ")");
        P_CHECK(p);
        return x;
    }
    if (s_is_op(t, "[") || s_is_op(t, "{")) {
        s_next(p);
        return s_parse_display(p, t->s[0] == '{', t->line);
    }
    return s_pfail(p, "unexpected '%s'", s_tok_desc(t));
}

static bool s_tuple_end(parser *p, const char *extra_end) {
    tok *t = s_cur(p);
    if (t->t == T_VAR_END || t->t == T_BLOCK_END || s_is_op(t, ")"))
        return true;
    return extra_end && s_is_name(t, extra_end);
}

static node *s_parse_tuple(parser *p, bool simplified, bool with_condexpr, const char *extra_end, bool explicit_parens) {
    int line = s_cur(p)->line;
    nlist args = {0};
    bool is_tuple = false;
    for (;;) {
        if (args.n && !s_expect_op(p, ","))
            return NULL;
        if (s_tuple_end(p, extra_end))
            break;
        node *x = simplified ? s_parse_primary(p) : s_parse_expression(p, with_condexpr);
        P_CHECK(p);
        s_nl_push(p->a, &args, x);
        if (s_is_op(s_cur(p), ","))
            is_tuple = true;
        else
            break;
    }
    if (!is_tuple) {
        if (args.n)
            return args.v[0];
        if (!explicit_parens)
            return s_pfail(p, "Expected an expression, got '%s'", s_tok_desc(s_cur(p)));
    }
    node *x = s_node(p, E_TUPLE, line);
    x->l1 = args;
    return x;
}

static node *s_parse_subscribed(parser *p) {
    int line = s_cur(p)->line;
    node *args[3] = {NULL, NULL, NULL};
    if (s_is_op(s_cur(p), ":")) {
        s_next(p);
    } else {
        node *x = s_parse_expression(p, true);
        P_CHECK(p);
        if (!s_is_op(s_cur(p), ":"))
            return x;
        s_next(p);
        args[0] = x;
    }
    if (!s_is_op(s_cur(p), ":") && !s_is_op(s_cur(p), "]") && !s_is_op(s_cur(p), ",")) {
        args[1] = s_parse_expression(p, true);
        P_CHECK(p);
    }
    if (s_is_op(s_cur(p), ":")) {
        s_next(p);
        if (!s_is_op(s_cur(p), "]") && !s_is_op(s_cur(p), ",")) {
            args[2] = s_parse_expression(p, true);
            P_CHECK(p);
        }
    }
    node *x = s_node(p, E_SLICE, line);
    x->b = args[0];
    x->c = args[1];
    x->d = args[2];
    return x;
}

/* (args, name=kwargs) into x->l1 / x->names + x->l2 */
static bool s_parse_call_args(parser *p, node *x) {
    if (!s_expect_op(p, "("))
        return false;
    bool first = true;
    while (!s_is_op(s_cur(p), ")")) {
        if (!first && !s_expect_op(p, ","))
            return false;
        if (s_is_op(s_cur(p), ")"))
            break;
        first = false;
        if (s_is_op(s_cur(p), "*") || s_is_op(s_cur(p), "**")) {
            s_pfail(p, "*args and **kwargs in calls are not supported");
            return false;
        }
        if (s_cur(p)->t == T_NAME && s_is_op(s_look(p), "=")) {
            const char *key = s_cur(p)->s;
            s_next(p);
            s_next(p);
            node *v = s_parse_expression(p, true);
            if (p->failed)
                return false;
            s_names_push(p->a, x, key);
            s_nl_push(p->a, &x->l2, v);
        } else {
            if (x->nnames) {
                s_pfail(p, "positional argument follows keyword argument");
                return false;
            }
            node *v = s_parse_expression(p, true);
            if (p->failed)
                return false;
            s_nl_push(p->a, &x->l1, v);
        }
    }
    return s_expect_op(p, ")");
}

/* a call x(...): the arguments from the opening parenthesis on */
static node *s_parse_call(parser *p, node *x, int line) {
    node *c = s_node(p, E_CALL, line);
    c->a = x;
    return s_parse_call_args(p, c) ? c : NULL;
}

static node *s_parse_postfix(parser *p, node *x) {
    for (;;) {
        tok *t = s_cur(p);
        if (s_is_op(t, ".")) {
            s_next(p);
            tok *a = s_cur(p);
            if (a->t == T_NAME) {
                s_next(p);
                node *g = s_node(p, E_GETATTR, t->line);
                g->a = x;
                g->name = a->s;
                g->nlen = a->n;
                x = g;
            } else if (a->t == T_INT) {
                s_next(p);
                node *g = s_node(p, E_GETITEM, t->line);
                g->a = x;
                g->b = s_const(p, s_int(a->i), t->line);
                x = g;
            } else
                return s_pfail(p, "expected name or number after '.'");
        } else if (s_is_op(t, "[")) {
            s_next(p);
            nlist args = {0};
            while (!s_is_op(s_cur(p), "]")) {
                if (args.n && !s_expect_op(p, ","))
                    return NULL;
                node *s = s_parse_subscribed(p);
                P_CHECK(p);
                s_nl_push(p->a, &args, s);
            }
            if (!s_expect_op(p, "]"))
                return NULL;
            if (args.n == 0)
                return s_pfail(p, "expected subscript expression");
            node *idx;
            if (args.n == 1)
                idx = args.v[0];
            else {
                idx = s_node(p, E_TUPLE, t->line);
                idx->l1 = args;
            }
            if (idx->k == E_SLICE) {
                idx->a = x;
                x = idx;
            } else {
                node *g = s_node(p, E_GETITEM, t->line);
                g->a = x;
                g->b = idx;
                x = g;
            }
        } else if (s_is_op(t, "(")) {
            if (!(x = s_parse_call(p, x, t->line)))
                return NULL;
        } else
            break;
    }
    return x;
}

static node *s_parse_filter_name(parser *p, uint8_t kind, node *obj) {
    tok *t = s_cur(p);
    if (t->t != T_NAME)
        return s_pfail(p, "expected a %s name, got '%s'", kind == E_FILTER ? "filter" : "test", s_tok_desc(t));
    s_next(p);
    node *f = s_node(p, kind, t->line);
    f->a = obj;
    f->name = t->s;
    f->nlen = t->n;
    while (s_is_op(s_cur(p), ".") && s_look(p)->t == T_NAME) { /* dotted names: keep the last part */
        s_next(p);
        f->name = s_cur(p)->s;
        f->nlen = s_cur(p)->n;
        s_next(p);
    }
    return f;
}

static node *s_parse_filter_expr(parser *p, node *x) {
    for (;;) {
        tok *t = s_cur(p);
        if (s_is_op(t, "|")) {
            s_next(p);
            node *f = s_parse_filter_name(p, E_FILTER, x);
            P_CHECK(p);
            if (s_is_op(s_cur(p), "(") && !s_parse_call_args(p, f))
                return NULL;
            x = f;
        } else if (s_is_name(t, "is")) {
            s_next(p);
            bool neg = false;
            if (s_is_name(s_cur(p), "not")) {
                neg = true;
                s_next(p);
            }
            node *f = s_parse_filter_name(p, E_TEST, x);
            P_CHECK(p);
            f->op = neg;
            tok *c = s_cur(p);
            if (s_is_op(c, "(")) {
                if (!s_parse_call_args(p, f))
                    return NULL;
            } else if ((c->t == T_NAME || c->t == T_STRING || c->t == T_INT || c->t == T_FLOAT || s_is_op(c, "(") ||
                        s_is_op(c, "[") || s_is_op(c, "{")) &&
                       !s_is_name(c, "else") && !s_is_name(c, "or") && !s_is_name(c, "and")) {
                if (s_is_name(c, "is"))
                    return s_pfail(p, "You cannot chain multiple tests with is");
                node *arg = s_parse_primary(p);
                P_CHECK(p);
                arg = s_parse_postfix(p, arg);
                P_CHECK(p);
                s_nl_push(p->a, &f->l1, arg);
            }
            x = f;
        } else if (s_is_op(t, "(")) {
            if (!(x = s_parse_call(p, x, t->line)))
                return NULL;
        } else
            break;
    }
    return x;
}

/* ---- statements ---- */

static bool s_can_assign(node *x) {
    if (x->k == E_NAME || x->k == E_NSREF)
        return true;
    if (x->k == E_TUPLE) {
        for (size_t i = 0; i < x->l1.n; i++)
            if (x->l1.v[i]->k != E_NAME)
                return false;
        return true;
    }
    return false;
}

static node *s_parse_assign_target(parser *p, bool with_namespace, const char *extra_end) {
    node *x;
    if (with_namespace && s_cur(p)->t == T_NAME && s_is_op(s_look(p), ".")) {
        tok *t = s_cur(p);
        s_next(p);
        s_next(p);
        if (s_cur(p)->t != T_NAME)
            return s_pfail(p, "expected an attribute name");
        x = s_node(p, E_NSREF, t->line);
        x->a = s_node(p, E_NAME, t->line);
        x->a->name = t->s;
        x->a->nlen = t->n;
        x->name = s_cur(p)->s;
        x->nlen = s_cur(p)->n;
        s_next(p);
    } else {
        x = s_parse_tuple(p, true, true, extra_end, false);
        P_CHECK(p);
    }
    if (!s_can_assign(x))
        return s_pfail(p, "can't assign to this expression");
    if (x->k == E_NAME && (!strcmp(x->name, "true") || !strcmp(x->name, "false") || !strcmp(x->name, "none")))
        return s_pfail(p, "can't assign to '%s'", x->name);
    return x;
}

static const char *const s_end_if[] = {"elif", "else", "endif", NULL};
static const char *const s_end_for[] = {"endfor", "else", NULL};

static node *s_body_of(parser *p, const char *const *end, int line) {
    node *b = s_node(p, S_BODY, line);
    b->l1 = s_subparse(p, end);
    P_CHECK(p);
    return b;
}

/* parses the block end of a statement header, then the body up to one of end (consumed: the end name) */
static node *s_parse_statements(parser *p, const char *const *end, int line) {
    if (!s_expect_t(p, T_BLOCK_END, "end of statement block"))
        return NULL;
    return s_body_of(p, end, line);
}

/* s_parse_statements up to the one tag end_tag, then steps over end_tag */
static node *s_parse_block(parser *p, const char *end_tag, int line) {
    const char *const end[] = {end_tag, NULL};
    node *b = s_parse_statements(p, end, line);
    P_CHECK(p);
    s_next(p);
    return b;
}

static bool s_parse_signature(parser *p, node *x) {
    if (!s_expect_op(p, "("))
        return false;
    while (!s_is_op(s_cur(p), ")")) {
        if (x->nnames && !s_expect_op(p, ","))
            return false;
        if (s_cur(p)->t != T_NAME) {
            s_pfail(p, "expected a parameter name");
            return false;
        }
        s_names_push(p->a, x, s_cur(p)->s);
        s_next(p);
        node *def = NULL;
        if (s_is_op(s_cur(p), "=")) {
            s_next(p);
            def = s_parse_expression(p, true);
            if (p->failed)
                return false;
        }
        s_nl_push(p->a, &x->l1, def);
    }
    return s_expect_op(p, ")");
}

static node *s_parse_statement(parser *p) {
    tok *t = s_cur(p);
    int line = t->line;
    if (t->t != T_NAME)
        return s_pfail(p, "tag name expected");
    const char *nm = t->s;
    s_next(p);
    if (!strcmp(nm, "if")) {
        node *x = s_node(p, S_IF, line);
        for (;;) {
            node *cond = s_parse_tuple(p, false, false, NULL, false);
            P_CHECK(p);
            node *body = s_parse_statements(p, s_end_if, line);
            P_CHECK(p);
            s_nl_push(p->a, &x->l1, cond);
            s_nl_push(p->a, &x->l2, body);
            tok *e = s_cur(p);
            s_next(p);
            if (!strcmp(e->s, "elif"))
                continue;
            if (!strcmp(e->s, "else")) {
                x->c = s_parse_block(p, "endif", line);
                P_CHECK(p);
            }
            break;
        }
        return x;
    }
    if (!strcmp(nm, "for")) {
        node *x = s_node(p, S_FOR, line);
        x->a = s_parse_assign_target(p, false, "in");
        P_CHECK(p);
        if (!s_is_name(s_cur(p), "in"))
            return s_pfail(p, "expected 'in' in for loop");
        s_next(p);
        x->b = s_parse_tuple(p, false, false, "recursive", false);
        P_CHECK(p);
        if (s_is_name(s_cur(p), "if")) {
            s_next(p);
            x->c = s_parse_expression(p, true);
            P_CHECK(p);
        }
        if (s_is_name(s_cur(p), "recursive"))
            return s_pfail(p, "recursive for loops are not supported");
        x->d = s_parse_statements(p, s_end_for, line);
        P_CHECK(p);
        tok *e = s_cur(p);
        s_next(p);
        if (!strcmp(e->s, "else")) {
            x->e = s_parse_block(p, "endfor", line);
            P_CHECK(p);
        }
        return x;
    }
    if (!strcmp(nm, "set")) {
        node *target = s_parse_assign_target(p, true, NULL);
        P_CHECK(p);
        if (s_is_op(s_cur(p), "=")) {
            s_next(p);
            node *x = s_node(p, S_SET, line);
            x->a = target;
            x->b = s_parse_tuple(p, false, true, NULL, false);
            P_CHECK(p);
            return x;
        }
        node *x = s_node(p, S_SETBLOCK, line);
        x->a = target;
        if (s_is_op(s_cur(p), "|")) {
            node *hole = s_node(p, E_HOLE, line);
            x->b = s_parse_filter_expr(p, hole);
            P_CHECK(p);
        }
        x->d = s_parse_block(p, "endset", line);
        P_CHECK(p);
        return x;
    }
    if (!strcmp(nm, "macro")) {
        node *x = s_node(p, S_MACRO, line);
        if (s_cur(p)->t != T_NAME)
            return s_pfail(p, "expected a macro name");
        x->name = s_cur(p)->s;
        x->nlen = s_cur(p)->n;
        s_next(p);
        if (!s_parse_signature(p, x))
            return NULL;
        x->d = s_parse_block(p, "endmacro", line);
        P_CHECK(p);
        if (s_cur(p)->t == T_NAME) /* {% endmacro name %} */
            s_next(p);
        return x;
    }
    if (!strcmp(nm, "call")) {
        node *x = s_node(p, S_CALLBLOCK, line);
        if (s_is_op(s_cur(p), "(") && !s_parse_signature(p, x))
            return NULL;
        x->a = s_parse_expression(p, true);
        P_CHECK(p);
        if (x->a->k != E_CALL)
            return s_pfail(p, "expected call");
        x->d = s_parse_block(p, "endcall", line);
        P_CHECK(p);
        return x;
    }
    if (!strcmp(nm, "filter")) {
        node *x = s_node(p, S_FILTERBLOCK, line);
        node *hole = s_node(p, E_HOLE, line);
        node *f = s_parse_filter_name(p, E_FILTER, hole);
        P_CHECK(p);
        if (s_is_op(s_cur(p), "(") && !s_parse_call_args(p, f))
            return NULL;
        x->b = s_parse_filter_expr(p, f);
        P_CHECK(p);
        x->d = s_parse_block(p, "endfilter", line);
        P_CHECK(p);
        return x;
    }
    if (!strcmp(nm, "with")) {
        node *x = s_node(p, S_WITH, line);
        while (s_cur(p)->t != T_BLOCK_END) {
            if (x->nnames && !s_expect_op(p, ","))
                return NULL;
            if (s_cur(p)->t != T_NAME)
                return s_pfail(p, "expected a name in with");
            s_names_push(p->a, x, s_cur(p)->s);
            s_next(p);
            if (!s_expect_op(p, "="))
                return NULL;
            node *v = s_parse_expression(p, true);
            P_CHECK(p);
            s_nl_push(p->a, &x->l1, v);
        }
        x->d = s_parse_block(p, "endwith", line);
        P_CHECK(p);
        return x;
    }
    if (!strcmp(nm, "generation")) {
        return s_parse_block(p, "endgeneration", line);
    }
    if (!strcmp(nm, "break"))
        return s_node(p, S_BREAK, line);
    if (!strcmp(nm, "continue"))
        return s_node(p, S_CONTINUE, line);
    p->i--;
    return s_pfail(p, "Encountered unknown tag '%s'", nm);
}

static nlist s_subparse(parser *p, const char *const *end_tokens) {
    nlist body = {0};
    if (p->depth > P_MAX_DEPTH) {
        s_pfail(p, "expressions or blocks nested too deeply");
        return body;
    }
    p->depth++;
    body = s_subparse_body(p, end_tokens);
    p->depth--;
    return body;
}

static nlist s_subparse_body(parser *p, const char *const *end_tokens) {
    nlist body = {0};
    for (;;) {
        if (p->failed)
            return body;
        tok *t = s_cur(p);
        if (t->t == T_EOF) {
            if (end_tokens)
                s_pfail(p, "Unexpected end of template, expected '%s'", end_tokens[0]);
            return body;
        }
        if (t->t == T_DATA) {
            node *x = s_node(p, S_TEXT, t->line);
            x->v = s_str(t->s, t->n);
            s_nl_push(p->a, &body, x);
            s_next(p);
        } else if (t->t == T_VAR_BEGIN) {
            s_next(p);
            node *x = s_node(p, S_OUT, t->line);
            x->a = s_parse_tuple(p, false, true, NULL, false);
            if (p->failed)
                return body;
            if (!s_expect_t(p, T_VAR_END, "end of print statement"))
                return body;
            s_nl_push(p->a, &body, x);
        } else if (t->t == T_BLOCK_BEGIN) {
            s_next(p);
            tok *c = s_cur(p);
            if (end_tokens && c->t == T_NAME)
                for (size_t i = 0; end_tokens[i]; i++)
                    if (!strcmp(c->s, end_tokens[i]))
                        return body;
            node *x = s_parse_statement(p);
            if (p->failed)
                return body;
            if (!s_expect_t(p, T_BLOCK_END, "end of statement block"))
                return body;
            s_nl_push(p->a, &body, x);
        } else {
            s_pfail(p, "unexpected '%s'", s_tok_desc(t));
            return body;
        }
    }
}

/* ---- runtime ------------------------------------------------------------------------------------ */

struct tok_jinja {
    arena a;      /* owns the tokens and the AST */
    node *root;   /* S_BODY */
    jmp_buf oom;  /* used only while parsing */
};

enum fnk { FN_BUILTIN, FN_METHOD, FN_MACRO, FN_CALLER };

typedef struct frame {     /* one variable scope: template root, loop iteration, macro call, with */
    struct frame *parent;  /* enclosing scope; the globals frame has none */
    jdict vars;            /* name (V_STR) -> value */
} frame;

typedef struct jfn {
    uint8_t k;          /* enum fnk */
    const char *name;   /* builtin / method name */
    jv self;            /* FN_METHOD receiver */
    node *def;          /* FN_MACRO: S_MACRO; FN_CALLER: S_CALLBLOCK */
    frame *closure;     /* frame the macro was defined in */
    struct jfn *caller; /* FN_MACRO invoked from a call block */
} jfn;

typedef struct loopst {
    jlist *items; /* the (filtered) items iterated */
    size_t i;     /* index0 of the current item */
} loopst;

typedef struct rctx {
    arena a;       /* every value of this render */
    sbuf *out;     /* where output goes now (a capture buffer inside macros and set blocks) */
    char *err;     /* caller's error buffer */
    size_t errlen; /* bytes of err */
    bool failed;   /* an error message is already written */
    int depth; /* macro recursion depth */
    jv hole;   /* value a filter block / filtered set block feeds into its filter chain */
    jmp_buf oom;
} rctx;

enum { R_OK = 0, R_BREAK = 1, R_CONTINUE = 2 };

static int s_fail(rctx *r, int line, const char *fmt, ...) {
    if (r->failed)
        return -EINVAL;
    r->failed = true;
    va_list ap;
    va_start(ap, fmt);
    s_errmsg(r->err, r->errlen, line, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static frame *s_frame_new(rctx *r, frame *parent) {
    frame *f = s_zalloc(&r->a, sizeof(frame));
    f->parent = parent;
    return f;
}

static jv s_lookup(frame *f, const char *name, size_t n) {
    for (; f; f = f->parent) {
        jv *v = s_dict_finds(&f->vars, name, n);
        if (v)
            return *v;
    }
    return s_undef_named(name);
}

static void s_frame_set(rctx *r, frame *f, const char *name, jv v) {
    s_dict_set(&r->a, &f->vars, s_strz(name), v);
}

static jv s_fnv(rctx *r, uint8_t k, const char *name, jv self) {
    jfn *fn = s_zalloc(&r->a, sizeof(jfn));
    fn->k = k;
    fn->name = name;
    fn->self = self;
    return (jv){.t = V_FUNC, .fn = fn};
}

static jv s_tostr(rctx *r, jv v) {
    if (v.t == V_STR)
        return v;
    sbuf b;
    s_sb_init(&b, &r->a);
    s_fmt(&b, v, false);
    return b.n ? s_str(b.p, b.n) : s_str("", 0);
}

/* an undefined value from a failed attribute lookup; its message is jinja2's */
static jv s_undef_attr(rctx *r, jv obj, const char *name) {
    sbuf b;
    s_sb_init(&b, &r->a);
    s_sb_printf(&b, "'%s object' has no attribute '", s_type_name(obj));
    s_sb_puts(&b, name);
    s_sb_putc(&b, '\'');
    jv u = {.t = V_UNDEF, .tuple = 1, .s = {b.p, b.n}};
    return u;
}

static int s_undef_err(rctx *r, int line, jv u) {
    if (u.s.p && u.tuple)
        return s_fail(r, line, "%s", u.s.p);
    if (u.s.p)
        return s_fail(r, line, "'%s' is undefined", u.s.p);
    return s_fail(r, line, "undefined value");
}

/* code point offsets of a string: off[i] = byte offset of code point i, off[n] = bytes */
static size_t *s_cp_offsets(rctx *r, jv s, size_t *ret_n) {
    size_t cnt = s_u8_len(s.s.p, s.s.n);
    size_t *off = s_alloc(&r->a, (cnt + 1) * sizeof(size_t));
    size_t i = 0, k = 0;
    while (i < s.s.n) {
        off[k++] = i;
        s_u8_next(s.s.p, s.s.n, &i);
    }
    off[k] = s.s.n;
    *ret_n = cnt;
    return off;
}

/* whether n is one of the NULL-terminated names */
static bool s_in_names(const char *const *names, const char *n) {
    for (size_t i = 0; names[i]; i++)
        if (!strcmp(names[i], n))
            return true;
    return false;
}

static bool s_is_dict_method(const char *n) {
    static const char *const m[] = {"items", "keys", "values", "get", "copy", "pop", "popitem", "update",
                                    "setdefault", "clear", "fromkeys", NULL};
    return s_in_names(m, n);
}

static bool s_is_str_method(const char *n) {
    static const char *const m[] = {"startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip",
                                    "lower", "upper", "replace", "title", "capitalize", "find", "rfind", "index",
                                    "count", "join", "splitlines", "isdigit", "isalpha", "isalnum", "isspace",
                                    "islower", "isupper", "format", "removeprefix", "removesuffix", "swapcase",
                                    "casefold", "zfill", "center", "ljust", "rjust", "partition", "rpartition",
                                    "encode", "isnumeric", "isdecimal", "istitle", NULL};
    return s_in_names(m, n);
}

static bool s_is_list_method(const char *n) {
    static const char *const m[] = {"index", "count", "copy", "append", "extend", "insert", "pop", "remove",
                                    "reverse", "sort", "clear", NULL};
    return s_in_names(m, n);
}

static int s_loop_attr(rctx *r, loopst *L, const char *name, jv self, jv *out, int line) {
    size_t n = L->items->n, i = L->i;
    if (!strcmp(name, "index")) *out = s_int((int64_t)i + 1);
    else if (!strcmp(name, "index0")) *out = s_int((int64_t)i);
    else if (!strcmp(name, "revindex")) *out = s_int((int64_t)(n - i));
    else if (!strcmp(name, "revindex0")) *out = s_int((int64_t)(n - i - 1));
    else if (!strcmp(name, "first")) *out = s_bool(i == 0);
    else if (!strcmp(name, "last")) *out = s_bool(i + 1 == n);
    else if (!strcmp(name, "length")) *out = s_int((int64_t)n);
    else if (!strcmp(name, "depth")) *out = s_int(1);
    else if (!strcmp(name, "depth0")) *out = s_int(0);
    else if (!strcmp(name, "previtem")) *out = i > 0 ? L->items->v[i - 1] : s_undef_named("previtem");
    else if (!strcmp(name, "nextitem")) *out = i + 1 < n ? L->items->v[i + 1] : s_undef_named("nextitem");
    else if (!strcmp(name, "cycle")) *out = s_fnv(r, FN_METHOD, "cycle", self);
    else if (!strcmp(name, "changed")) return s_fail(r, line, "loop.changed is not supported");
    else *out = s_undef_named(name);
    return 0;
}

/* environment.getattr(obj, name) */
static int s_getattr(rctx *r, jv obj, const char *name, jv *out, int line) {
    switch (obj.t) {
    case V_UNDEF:
        return s_undef_err(r, line, obj);
    case V_DICT:
        if (s_is_dict_method(name)) {
            *out = s_fnv(r, FN_METHOD, name, obj);
            return 0;
        }
        {
            jv *v = s_dict_finds(obj.d, name, strlen(name));
            *out = v ? *v : s_undef_attr(r, obj, name);
        }
        return 0;
    case V_NS: {
        jv *v = s_dict_finds(obj.d, name, strlen(name));
        *out = v ? *v : s_undef_named(name);
        return 0;
    }
    case V_STR:
        *out = s_is_str_method(name) ? s_fnv(r, FN_METHOD, name, obj) : s_undef_attr(r, obj, name);
        return 0;
    case V_LIST:
        *out = s_is_list_method(name) ? s_fnv(r, FN_METHOD, name, obj) : s_undef_attr(r, obj, name);
        return 0;
    case V_LOOP:
        return s_loop_attr(r, obj.loop, name, obj, out, line);
    default:
        *out = s_undef_attr(r, obj, name);
        return 0;
    }
}

static int s_index(rctx *r, jv key, int64_t n, int64_t *ret, int line) {
    if (key.t != V_INT && key.t != V_BOOL)
        return s_fail(r, line, "indices must be integers, not %s", s_type_name(key));
    int64_t i = key.i;
    if (i < 0)
        i += n;
    *ret = i;
    return 0;
}

/* environment.getitem(obj, key) */
static int s_getitem(rctx *r, jv obj, jv key, jv *out, int line) {
    switch (obj.t) {
    case V_UNDEF:
        return s_undef_err(r, line, obj);
    case V_DICT:
    case V_NS: {
        jv *v = s_dict_find(obj.d, key);
        if (v) {
            *out = *v;
            return 0;
        }
        if (key.t == V_STR && obj.t == V_DICT)
            return s_getattr(r, obj, key.s.p, out, line);
        *out = key.t == V_STR ? s_undef_named(key.s.p) : s_undef;
        return 0;
    }
    case V_LIST: {
        if (key.t == V_STR)
            return s_getattr(r, obj, key.s.p, out, line);
        int64_t i = 0;
        if (s_index(r, key, (int64_t)obj.l->n, &i, line) < 0)
            return -EINVAL;
        *out = (i >= 0 && i < (int64_t)obj.l->n) ? obj.l->v[i] : s_undef;
        return 0;
    }
    case V_STR: {
        if (key.t == V_STR)
            return s_getattr(r, obj, key.s.p, out, line);
        size_t cnt;
        size_t *off = s_cp_offsets(r, obj, &cnt);
        int64_t i = 0;
        if (s_index(r, key, (int64_t)cnt, &i, line) < 0)
            return -EINVAL;
        *out = (i >= 0 && i < (int64_t)cnt) ? s_str(s_strndup(&r->a, obj.s.p + off[i], off[i + 1] - off[i]), off[i + 1] - off[i])
                                            : s_undef;
        return 0;
    }
    case V_LOOP:
        if (key.t == V_STR)
            return s_getattr(r, obj, key.s.p, out, line);
        *out = s_undef;
        return 0;
    default:
        *out = s_undef;
        return 0;
    }
}

/* one given slice bound i, Python's adjustment: negative counts from the end, then clamped */
static int64_t s_slice_bound(int64_t i, int64_t len, int64_t step) {
    if (i < 0) {
        i += len;
        if (i < 0)
            i = step < 0 ? -1 : 0;
    } else if (i >= len)
        i = step < 0 ? len - 1 : len;
    return i;
}

/* Python slice index adjustment */
static void s_slice_indices(int64_t len, jv *st, jv *sp, int64_t step, int64_t *ret_start, int64_t *ret_stop) {
    *ret_start = !st || st->t == V_NONE ? (step < 0 ? len - 1 : 0) : s_slice_bound(st->i, len, step);
    *ret_stop = !sp || sp->t == V_NONE ? (step < 0 ? -1 : len) : s_slice_bound(sp->i, len, step);
}

static int s_slice(rctx *r, jv obj, jv *st, jv *sp, jv *stepv, jv *out, int line) {
    int64_t step = 1;
    jv *bounds[3] = {st, sp, stepv};
    for (int q = 0; q < 3; q++)
        if (bounds[q] && bounds[q]->t != V_NONE && bounds[q]->t != V_INT && bounds[q]->t != V_BOOL)
            return s_fail(r, line, "slice indices must be integers or None");
    if (stepv && stepv->t != V_NONE)
        step = stepv->i;
    if (step == 0)
        return s_fail(r, line, "slice step cannot be zero");
    if (obj.t == V_UNDEF)
        return s_undef_err(r, line, obj);
    if (obj.t == V_LIST) {
        int64_t a, b;
        s_slice_indices((int64_t)obj.l->n, st, sp, step, &a, &b);
        jlist *l = s_list_new(&r->a, 0);
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step)
            s_list_push(&r->a, l, obj.l->v[i]);
        *out = s_listv(l);
        out->tuple = obj.tuple;
        return 0;
    }
    if (obj.t == V_STR) {
        size_t cnt;
        size_t *off = s_cp_offsets(r, obj, &cnt);
        int64_t a, b;
        s_slice_indices((int64_t)cnt, st, sp, step, &a, &b);
        sbuf sb;
        s_sb_init(&sb, &r->a);
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step)
            s_sb_put(&sb, obj.s.p + off[i], off[i + 1] - off[i]);
        *out = sb.n ? s_str(sb.p, sb.n) : s_str("", 0);
        return 0;
    }
    /* jinja2 compiles slices to plain Python subscripts (no getitem fallback to Undefined) */
    if (obj.t == V_DICT)
        return s_fail(r, line, "unhashable type: 'slice'");
    return s_fail(r, line, "'%s' object is not subscriptable", s_type_name(obj));
}

/* iterate: list of items of an iterable */
static int s_iter(rctx *r, jv v, jlist **ret, int line) {
    switch (v.t) {
    case V_UNDEF:
        *ret = s_list_new(&r->a, 0);
        return 0;
    case V_LIST:
        *ret = v.l;
        return 0;
    case V_DICT: {
        jlist *l = s_list_new(&r->a, v.d->n);
        for (size_t i = 0; i < v.d->n; i++)
            s_list_push(&r->a, l, v.d->k[i]);
        *ret = l;
        return 0;
    }
    case V_STR: {
        jlist *l = s_list_new(&r->a, 0);
        size_t i = 0;
        while (i < v.s.n) {
            size_t st = i;
            s_u8_next(v.s.p, v.s.n, &i);
            s_list_push(&r->a, l, s_str(s_strndup(&r->a, v.s.p + st, i - st), i - st));
        }
        *ret = l;
        return 0;
    }
    default:
        return s_fail(r, line, "'%s' object is not iterable", s_type_name(v));
    }
}

static int s_cmp_order(rctx *r, jv a, jv b, int *ret, int line) {
    if (s_is_num(a) && s_is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT)
            *ret = a.i < b.i ? -1 : a.i > b.i;
        else {
            double x = s_num(a), y = s_num(b);
            *ret = x < y ? -1 : x > y;
        }
        return 0;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.s.n < b.s.n ? a.s.n : b.s.n;
        int c = memcmp(a.s.p, b.s.p, m);
        *ret = c ? (c < 0 ? -1 : 1) : (a.s.n < b.s.n ? -1 : a.s.n > b.s.n);
        return 0;
    }
    if (a.t == V_LIST && b.t == V_LIST && a.tuple == b.tuple) {
        size_t m = a.l->n < b.l->n ? a.l->n : b.l->n;
        for (size_t i = 0; i < m; i++) {
            if (s_eq(a.l->v[i], b.l->v[i]))
                continue;
            return s_cmp_order(r, a.l->v[i], b.l->v[i], ret, line);
        }
        *ret = a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
        return 0;
    }
    if (a.t == V_UNDEF)
        return s_undef_err(r, line, a);
    if (b.t == V_UNDEF)
        return s_undef_err(r, line, b);
    return s_fail(r, line, "'<' not supported between instances of '%s' and '%s'", s_type_name(a), s_type_name(b));
}

static bool s_memmem_found(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0)
        return true;
    return nn <= hn && memmem(h, hn, nd, nn) != NULL;
}

static int s_contains(rctx *r, jv item, jv cont, bool *ret, int line) {
    switch (cont.t) {
    case V_STR:
        if (item.t != V_STR)
            return s_fail(r, line, "'in <string>' requires string as left operand, not %s", s_type_name(item));
        *ret = s_memmem_found(cont.s.p, cont.s.n, item.s.p, item.s.n);
        return 0;
    case V_LIST:
        *ret = false;
        for (size_t i = 0; i < cont.l->n; i++)
            if (s_eq(cont.l->v[i], item)) {
                *ret = true;
                break;
            }
        return 0;
    case V_DICT:
        if ((item.t == V_LIST && !item.tuple) || item.t == V_DICT || item.t == V_NS)
            return s_fail(r, line, "unhashable type: '%s'", s_type_name(item));
        *ret = s_dict_find(cont.d, item) != NULL;
        return 0;
    case V_UNDEF:
        *ret = false;
        return 0;
    default:
        return s_fail(r, line, "argument of type '%s' is not iterable", s_type_name(cont));
    }
}

static int s_arith(rctx *r, int op, jv a, jv b, jv *out, int line) {
    if (a.t == V_UNDEF)
        return s_undef_err(r, line, a);
    if (b.t == V_UNDEF)
        return s_undef_err(r, line, b);
    if (op == OP_ADD) {
        if (a.t == V_STR && b.t == V_STR) {
            char *p = s_alloc(&r->a, a.s.n + b.s.n + 1);
            memcpy(p, a.s.p, a.s.n);
            memcpy(p + a.s.n, b.s.p, b.s.n);
            p[a.s.n + b.s.n] = 0;
            *out = s_str(p, a.s.n + b.s.n);
            return 0;
        }
        if (a.t == V_LIST && b.t == V_LIST && a.tuple == b.tuple) {
            jlist *l = s_list_new(&r->a, a.l->n + b.l->n);
            for (size_t i = 0; i < a.l->n; i++)
                s_list_push(&r->a, l, a.l->v[i]);
            for (size_t i = 0; i < b.l->n; i++)
                s_list_push(&r->a, l, b.l->v[i]);
            *out = s_listv(l);
            out->tuple = a.tuple;
            return 0;
        }
    }
    if (op == OP_MUL) {
        jv s = a, k = b;
        if (b.t == V_STR || b.t == V_LIST) {
            s = b;
            k = a;
        }
        if ((s.t == V_STR || s.t == V_LIST) && (k.t == V_INT || k.t == V_BOOL)) {
            int64_t cnt = k.i < 0 ? 0 : k.i;
            size_t unit = s.t == V_STR ? s.s.n : s.l->n * sizeof(jv);
            if (unit && (uint64_t)cnt > (64u << 20) / unit)
                return s_fail(r, line, "repetition result too large (over 64 MiB)");
            if (s.t == V_STR) {
                sbuf sb;
                s_sb_init(&sb, &r->a);
                for (int64_t i = 0; i < cnt; i++)
                    s_sb_put(&sb, s.s.p, s.s.n);
                *out = sb.n ? s_str(sb.p, sb.n) : s_str("", 0);
            } else {
                jlist *l = s_list_new(&r->a, 0);
                for (int64_t i = 0; i < cnt; i++)
                    for (size_t j = 0; j < s.l->n; j++)
                        s_list_push(&r->a, l, s.l->v[j]);
                *out = s_listv(l);
                out->tuple = s.tuple;
            }
            return 0;
        }
    }
    if (op == OP_MOD && a.t == V_STR) {
        /* printf-style formatting: %s %d %r %% with one value or a tuple */
        jlist *args;
        if (b.t == V_LIST && b.tuple)
            args = b.l;
        else {
            args = s_list_new(&r->a, 1);
            s_list_push(&r->a, args, b);
        }
        sbuf sb;
        s_sb_init(&sb, &r->a);
        size_t ai = 0;
        for (size_t i = 0; i < a.s.n; i++) {
            char c = a.s.p[i];
            if (c != '%' || i + 1 >= a.s.n) {
                s_sb_putc(&sb, c);
                continue;
            }
            char f = a.s.p[++i];
            if (f == '%') {
                s_sb_putc(&sb, '%');
                continue;
            }
            if (ai >= args->n)
                return s_fail(r, line, "not enough arguments for format string");
            jv x = args->v[ai++];
            if (f == 's')
                s_fmt(&sb, x, false);
            else if (f == 'r')
                s_fmt(&sb, x, true);
            else if ((f == 'd' || f == 'i') && s_is_num(x))
                s_sb_printf(&sb, "%lld", (long long)(x.t == V_FLOAT ? (int64_t)x.f : x.i));
            else
                return s_fail(r, line, "unsupported format character '%c'", f);
        }
        bool mapping_like = b.t == V_DICT || (b.t == V_LIST && !b.tuple); /* Python treats these as a mapping */
        if (ai < args->n && !(mapping_like && ai == 0))
            return s_fail(r, line, "not all arguments converted during string formatting");
        *out = sb.n ? s_str(sb.p, sb.n) : s_str("", 0);
        return 0;
    }
    if (!s_is_num(a) || !s_is_num(b)) {
        static const char *const sym[] = {"+", "-", "*", "/", "//", "%", "**"};
        return s_fail(r, line, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op], s_type_name(a),
                      s_type_name(b));
    }
    bool ints = a.t != V_FLOAT && b.t != V_FLOAT;
    int64_t res = 0;
    bool ovf = false;
    switch (op) {
    case OP_ADD:
        if (ints && !(ovf = __builtin_add_overflow(a.i, b.i, &res)))
            *out = s_int(res);
        else if (!ints)
            *out = s_float(s_num(a) + s_num(b));
        break;
    case OP_SUB:
        if (ints && !(ovf = __builtin_sub_overflow(a.i, b.i, &res)))
            *out = s_int(res);
        else if (!ints)
            *out = s_float(s_num(a) - s_num(b));
        break;
    case OP_MUL:
        if (ints && !(ovf = __builtin_mul_overflow(a.i, b.i, &res)))
            *out = s_int(res);
        else if (!ints)
            *out = s_float(s_num(a) * s_num(b));
        break;
    case OP_DIV:
        if (s_num(b) == 0)
            return s_fail(r, line, "division by zero");
        *out = s_float(s_num(a) / s_num(b));
        return 0;
    case OP_FLOORDIV:
    case OP_MOD:
        if (s_num(b) == 0)
            return s_fail(r, line, ints ? "integer division or modulo by zero" : "float modulo");
        if (ints) {
            if (a.i == INT64_MIN && b.i == -1)
                return s_fail(r, line, "integer overflow (Python ints are unbounded; this renderer's are 64-bit)");
            int64_t q = a.i / b.i, m = a.i % b.i;
            if (m != 0 && ((m < 0) != (b.i < 0))) {
                q--;
                m += b.i;
            }
            *out = s_int(op == OP_FLOORDIV ? q : m);
        } else { /* CPython's float_divmod */
            double x = s_num(a), y = s_num(b);
            double mod = fmod(x, y), div = (x - mod) / y, fdiv;
            if (mod != 0) {
                if ((y < 0) != (mod < 0)) {
                    mod += y;
                    div -= 1.0;
                }
            } else
                mod = copysign(0.0, y);
            if (div != 0) {
                fdiv = floor(div);
                if (div - fdiv > 0.5)
                    fdiv += 1.0;
            } else
                fdiv = copysign(0.0, x / y);
            *out = s_float(op == OP_FLOORDIV ? fdiv : mod);
        }
        return 0;
    case OP_POW:
        if (ints && b.i >= 0) {
            int64_t acc = 1;
            for (int64_t i = 0; i < b.i && !ovf; i++) {
                ovf = __builtin_mul_overflow(acc, a.i, &acc);
                if (acc == 0 || acc == 1)
                    break;
            }
            if (acc == 1 && a.i == -1)
                acc = (b.i & 1) ? -1 : 1;
            if (!ovf)
                *out = s_int(acc);
        } else
            *out = s_float(pow(s_num(a), s_num(b)));
        break;
    default:
        return s_fail(r, line, "bad operator");
    }
    if (ovf)
        return s_fail(r, line, "integer overflow (Python ints are unbounded; this renderer's are 64-bit)");
    return 0;
}

/* ---- JSON (transformers' tojson = json.dumps(x, ensure_ascii=False, ...)) --------------------------- */

typedef struct jsonopt {
    bool ensure_ascii;
    bool sort_keys;
    bool has_indent;
    const char *indent; /* indent unit */
    size_t indent_n;    /* bytes */
    const char *item_sep;
    const char *key_sep;
} jsonopt;

static void s_json_str(sbuf *b, const char *s, size_t n, bool ensure_ascii) {
    s_sb_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t st = i;
        int32_t c = s_u8_next(s, n, &i);
        switch (c) {
        case '"': s_sb_puts(b, "\\\""); break;
        case '\\': s_sb_puts(b, "\\\\"); break;
        case '\n': s_sb_puts(b, "\\n"); break;
        case '\r': s_sb_puts(b, "\\r"); break;
        case '\t': s_sb_puts(b, "\\t"); break;
        case '\b': s_sb_puts(b, "\\b"); break;
        case '\f': s_sb_puts(b, "\\f"); break;
        default:
            if (c < 0x20)
                s_sb_printf(b, "\\u%04x", c);
            else if (ensure_ascii && c > 0x7e) {
                if (c >= 0x10000) {
                    int32_t v = c - 0x10000;
                    s_sb_printf(b, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
                } else
                    s_sb_printf(b, "\\u%04x", c);
            } else
                s_sb_put(b, s + st, i - st);
        }
    }
    s_sb_putc(b, '"');
}

static void s_json_nl(sbuf *b, const jsonopt *o, int level) {
    s_sb_putc(b, '\n');
    for (int i = 0; i < level; i++)
        s_sb_put(b, o->indent, o->indent_n);
}

static int s_json(rctx *r, sbuf *b, jv v, const jsonopt *o, int level, int line) {
    switch (v.t) {
    case V_NONE:
        s_sb_puts(b, "null");
        return 0;
    case V_BOOL:
        s_sb_puts(b, v.i ? "true" : "false");
        return 0;
    case V_INT:
        s_sb_printf(b, "%lld", (long long)v.i);
        return 0;
    case V_FLOAT:
        if (isnan(v.f))
            s_sb_puts(b, "NaN");
        else if (isinf(v.f))
            s_sb_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
        else
            s_fmt_float(b, v.f);
        return 0;
    case V_STR:
        s_json_str(b, v.s.p, v.s.n, o->ensure_ascii);
        return 0;
    case V_LIST:
        if (v.l->n == 0) {
            s_sb_puts(b, "[]");
            return 0;
        }
        s_sb_putc(b, '[');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i)
                s_sb_puts(b, o->item_sep);
            if (o->has_indent)
                s_json_nl(b, o, level + 1);
            if (s_json(r, b, v.l->v[i], o, level + 1, line) < 0)
                return -EINVAL;
        }
        if (o->has_indent)
            s_json_nl(b, o, level);
        s_sb_putc(b, ']');
        return 0;
    case V_DICT: {
        if (v.d->n == 0) {
            s_sb_puts(b, "{}");
            return 0;
        }
        size_t n = v.d->n;
        size_t *ord = s_alloc(&r->a, n * sizeof(size_t));
        jv *keys = s_alloc(&r->a, n * sizeof(jv));
        for (size_t i = 0; i < n; i++) {
            ord[i] = i;
            jv k = v.d->k[i];
            if (k.t == V_STR)
                keys[i] = k;
            else if (k.t == V_NONE)
                keys[i] = s_strz("null");
            else if (k.t == V_BOOL)
                keys[i] = s_strz(k.i ? "true" : "false");
            else if (k.t == V_INT || k.t == V_FLOAT)
                keys[i] = s_tostr(r, k);
            else
                return s_fail(r, line, "keys must be str, int, float, bool or None, not %s", s_type_name(k));
        }
        if (o->sort_keys) /* insertion sort, stable; keys compared as str */
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0; j--) {
                    int c;
                    s_cmp_order(r, keys[ord[j - 1]], keys[ord[j]], &c, line);
                    if (c <= 0)
                        break;
                    size_t t = ord[j];
                    ord[j] = ord[j - 1];
                    ord[j - 1] = t;
                }
        s_sb_putc(b, '{');
        for (size_t q = 0; q < n; q++) {
            size_t i = ord[q];
            if (q)
                s_sb_puts(b, o->item_sep);
            if (o->has_indent)
                s_json_nl(b, o, level + 1);
            s_json_str(b, keys[i].s.p, keys[i].s.n, o->ensure_ascii);
            s_sb_puts(b, o->key_sep);
            if (s_json(r, b, v.d->v[i], o, level + 1, line) < 0)
                return -EINVAL;
        }
        if (o->has_indent)
            s_json_nl(b, o, level);
        s_sb_putc(b, '}');
        return 0;
    }
    default:
        return s_fail(r, line, "Object of type %s is not JSON serializable", s_type_name(v));
    }
}

/* ---- argument binding ----------------------------------------------------------------------------- */

typedef struct args {  /* evaluated call arguments */
    jv *pos;          /* (npos) positional values */
    size_t npos;
    const char **kw;  /* (nkw) keyword names */
    jv *kwv;          /* (nkw) keyword values */
    size_t nkw;
} args;

/* fetches parameter idx / name: positional first, then keyword; returns false when absent */
static bool s_arg(const args *a, size_t idx, const char *name, jv *ret) {
    if (idx < a->npos) {
        *ret = a->pos[idx];
        return true;
    }
    for (size_t i = 0; name && i < a->nkw; i++)
        if (!strcmp(a->kw[i], name)) {
            *ret = a->kwv[i];
            return true;
        }
    return false;
}

static int s_need_str(rctx *r, jv v, const char *what, int line) {
    if (v.t != V_STR)
        return s_fail(r, line, "%s must be a string, not %s", what, s_type_name(v));
    return 0;
}

/* ---- string methods ----------------------------------------------------------------------------- */

/* Unicode SpecialCasing.txt unconditional mappings that expand (Python's str.upper/lower use them) */
static const char *s_special_case(int32_t c, bool upper) {
    if (!upper)
        return c == 0x130 ? "i\xcc\x87" : NULL;
    switch (c) {
    case 0xdf: return "SS";
    case 0x149: return "\xca\xbcN";
    case 0x1f0: return "J\xcc\x8c";
    case 0x587: return "\xd4\xb5\xd5\x92";
    case 0xfb00: return "FF";
    case 0xfb01: return "FI";
    case 0xfb02: return "FL";
    case 0xfb03: return "FFI";
    case 0xfb04: return "FFL";
    case 0xfb05: return "ST";
    case 0xfb06: return "ST";
    default: return NULL;
    }
}

static jv s_case(rctx *r, jv s, int mode /* 0 lower 1 upper 2 capitalize 3 title 4 swapcase 5 jinja title */) {
    char *o = s_alloc(&r->a, s.s.n * 3 + 4);
    size_t i = 0, k = 0;
    bool first = true, prev_cased = false;
    while (i < s.s.n) {
        int32_t c = s_u8_next(s.s.p, s.s.n, &i), m = c;
        switch (mode) {
        case 0: m = utf8proc_tolower(c); break;
        case 1: m = utf8proc_toupper(c); break;
        case 2: m = first ? utf8proc_totitle(c) : utf8proc_tolower(c); break;
        case 3: m = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c); break;
        case 4: m = utf8proc_islower(c) ? utf8proc_toupper(c) : utf8proc_isupper(c) ? utf8proc_tolower(c) : c; break;
        case 5: m = prev_cased ? utf8proc_tolower(c) : utf8proc_toupper(c); break;
        }
        if (mode == 5) /* jinja2's title filter: words begin after whitespace or one of -({[< */
            prev_cased = !(s_py_space(c) || (c < 128 && strchr("-({[<", (int)c)));
        if (mode == 3) {
            utf8proc_category_t cat = utf8proc_category(c);
            prev_cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        }
        first = false;
        const char *sp = (mode == 0 || mode == 1) ? s_special_case(c, mode == 1) : NULL;
        if (sp) { /* expansions are at most 3 bytes longer per 2-byte source code point: fits 3x */
            size_t sl = strlen(sp);
            memcpy(o + k, sp, sl);
            k += sl;
            continue;
        }
        k += s_u8_put(o + k, m);
    }
    o[k] = 0;
    return s_str(o, k);
}

/* whether the code point of s at byte offset pos is in chars (NULL: Python whitespace) */
static bool s_in_set(jv s, size_t pos, const jv *chars, const size_t *coff, size_t cn) {
    int32_t c = s_u8_next(s.s.p, s.s.n, &pos);
    if (!chars)
        return s_py_space(c);
    for (size_t z = 0; z < cn; z++) {
        size_t w = coff[z];
        if (s_u8_next(chars->s.p, chars->s.n, &w) == c)
            return true;
    }
    return false;
}

/* strip with chars (NULL/None: whitespace); which: 1 left, 2 right, 3 both */
static jv s_strip(rctx *r, jv s, jv *chars, int which) {
    size_t cn = 0;
    size_t *coff = NULL;
    bool use_chars = chars && chars->t == V_STR;
    if (use_chars)
        coff = s_cp_offsets(r, *chars, &cn);
    size_t cnt;
    size_t *off = s_cp_offsets(r, s, &cnt);
    size_t a = 0, b = cnt;
    if (which & 1)
        while (a < b && s_in_set(s, off[a], use_chars ? chars : NULL, coff, cn))
            a++;
    if (which & 2)
        while (b > a && s_in_set(s, off[b - 1], use_chars ? chars : NULL, coff, cn))
            b--;
    return s_str(s_strndup(&r->a, s.s.p + off[a], off[b] - off[a]), off[b] - off[a]);
}

static jv s_substr(rctx *r, const char *p, size_t n) { return s_str(s_strndup(&r->a, p, n), n); }

static int s_split(rctx *r, jv s, jv *sep, int64_t maxsplit, bool right, jv *out, int line) {
    jlist *l = s_list_new(&r->a, 0);
    if (!sep || sep->t == V_NONE) {
        /* whitespace split */
        size_t cnt;
        size_t *off = s_cp_offsets(r, s, &cnt);
        bool *sp = s_alloc(&r->a, cnt + 1);
        for (size_t i = 0; i < cnt; i++) {
            size_t q = off[i];
            sp[i] = s_py_space(s_u8_next(s.s.p, s.s.n, &q));
        }
        if (!right) {
            size_t i = 0;
            int64_t splits = 0;
            while (i < cnt) {
                while (i < cnt && sp[i])
                    i++;
                if (i >= cnt)
                    break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    size_t e = cnt;
                    while (e > i && sp[e - 1])
                        e--;
                    s_list_push(&r->a, l, s_substr(r, s.s.p + off[i], off[e] - off[i]));
                    break;
                }
                size_t j = i;
                while (j < cnt && !sp[j])
                    j++;
                s_list_push(&r->a, l, s_substr(r, s.s.p + off[i], off[j] - off[i]));
                splits++;
                i = j;
            }
        } else {
            jlist *tmp = s_list_new(&r->a, 0);
            size_t i = cnt;
            int64_t splits = 0;
            while (i > 0) {
                while (i > 0 && sp[i - 1])
                    i--;
                if (i == 0)
                    break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    size_t b = 0;
                    while (b < i && sp[b])
                        b++;
                    s_list_push(&r->a, tmp, s_substr(r, s.s.p + off[b], off[i] - off[b]));
                    break;
                }
                size_t j = i;
                while (j > 0 && !sp[j - 1])
                    j--;
                s_list_push(&r->a, tmp, s_substr(r, s.s.p + off[j], off[i] - off[j]));
                splits++;
                i = j;
            }
            for (size_t k = tmp->n; k > 0; k--)
                s_list_push(&r->a, l, tmp->v[k - 1]);
        }
        *out = s_listv(l);
        return 0;
    }
    if (s_need_str(r, *sep, "separator", line) < 0)
        return -EINVAL;
    if (sep->s.n == 0)
        return s_fail(r, line, "empty separator");
    const char *p = s.s.p, *end = s.s.p + s.s.n;
    if (!right) {
        int64_t splits = 0;
        for (;;) {
            const char *f = (maxsplit < 0 || splits < maxsplit) ? memmem(p, (size_t)(end - p), sep->s.p, sep->s.n) : NULL;
            if (!f) {
                s_list_push(&r->a, l, s_substr(r, p, (size_t)(end - p)));
                break;
            }
            s_list_push(&r->a, l, s_substr(r, p, (size_t)(f - p)));
            p = f + sep->s.n;
            splits++;
        }
    } else {
        jlist *tmp = s_list_new(&r->a, 0);
        int64_t splits = 0;
        const char *e = end;
        for (;;) {
            const char *f = NULL;
            if (maxsplit < 0 || splits < maxsplit)
                for (const char *q = e - sep->s.n; q >= p; q--)
                    if (memcmp(q, sep->s.p, sep->s.n) == 0) {
                        f = q;
                        break;
                    }
            if (!f) {
                s_list_push(&r->a, tmp, s_substr(r, p, (size_t)(e - p)));
                break;
            }
            s_list_push(&r->a, tmp, s_substr(r, f + sep->s.n, (size_t)(e - f - sep->s.n)));
            e = f;
            splits++;
        }
        for (size_t k = tmp->n; k > 0; k--)
            s_list_push(&r->a, l, tmp->v[k - 1]);
    }
    *out = s_listv(l);
    return 0;
}

static jv s_replace(rctx *r, jv s, jv old, jv new_, int64_t count) {
    sbuf b;
    s_sb_init(&b, &r->a);
    if (old.s.n == 0) {
        /* Python inserts new_ before every code point and at the end */
        size_t i = 0;
        int64_t done = 0;
        while (i < s.s.n) {
            if (count < 0 || done < count) {
                s_sb_put(&b, new_.s.p, new_.s.n);
                done++;
            }
            size_t st = i;
            s_u8_next(s.s.p, s.s.n, &i);
            s_sb_put(&b, s.s.p + st, i - st);
        }
        if (count < 0 || done < count)
            s_sb_put(&b, new_.s.p, new_.s.n);
    } else {
        const char *p = s.s.p, *end = s.s.p + s.s.n;
        int64_t done = 0;
        for (;;) {
            const char *f = (count < 0 || done < count) ? memmem(p, (size_t)(end - p), old.s.p, old.s.n) : NULL;
            if (!f) {
                s_sb_put(&b, p, (size_t)(end - p));
                break;
            }
            s_sb_put(&b, p, (size_t)(f - p));
            s_sb_put(&b, new_.s.p, new_.s.n);
            p = f + old.s.n;
            done++;
        }
    }
    return b.n ? s_str(b.p, b.n) : s_str("", 0);
}

static bool s_affix(jv s, jv a, bool suffix) {
    if (a.s.n > s.s.n)
        return false;
    return memcmp(suffix ? s.s.p + s.s.n - a.s.n : s.s.p, a.s.p, a.s.n) == 0;
}

static int s_str_method(rctx *r, jv s, const char *m, const args *a, jv *out, int line) {
    jv x, y, z;
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        if (!s_arg(a, 0, NULL, &x))
            return s_fail(r, line, "%s() takes at least 1 argument", m);
        bool suffix = m[0] == 'e', res = false;
        if (x.t == V_LIST && x.tuple) {
            for (size_t i = 0; i < x.l->n; i++) {
                if (s_need_str(r, x.l->v[i], m, line) < 0)
                    return -EINVAL;
                res = res || s_affix(s, x.l->v[i], suffix);
            }
        } else {
            if (x.t != V_STR)
                return s_fail(r, line, "%s first arg must be str or a tuple of str, not %s", m, s_type_name(x));
            res = s_affix(s, x, suffix);
        }
        *out = s_bool(res);
        return 0;
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        bool has = s_arg(a, 0, "chars", &x);
        if (has && x.t != V_STR && x.t != V_NONE)
            return s_fail(r, line, "%s arg must be None or str", m);
        *out = s_strip(r, s, has ? &x : NULL, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3);
        return 0;
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        bool has = s_arg(a, 0, "sep", &x);
        int64_t maxsplit = -1;
        if (s_arg(a, 1, "maxsplit", &y)) {
            if (y.t != V_INT)
                return s_fail(r, line, "maxsplit must be an integer");
            maxsplit = y.i;
        }
        return s_split(r, s, has ? &x : NULL, maxsplit, m[0] == 'r', out, line);
    }
    if (!strcmp(m, "lower") || !strcmp(m, "casefold")) { *out = s_case(r, s, 0); return 0; }
    if (!strcmp(m, "upper")) { *out = s_case(r, s, 1); return 0; }
    if (!strcmp(m, "capitalize")) { *out = s_case(r, s, 2); return 0; }
    if (!strcmp(m, "title")) { *out = s_case(r, s, 3); return 0; }
    if (!strcmp(m, "swapcase")) { *out = s_case(r, s, 4); return 0; }
    if (!strcmp(m, "replace")) {
        if (!s_arg(a, 0, NULL, &x) || !s_arg(a, 1, NULL, &y) || x.t != V_STR || y.t != V_STR)
            return s_fail(r, line, "replace() takes two string arguments");
        int64_t count = -1;
        if (s_arg(a, 2, "count", &z)) {
            if (z.t != V_INT)
                return s_fail(r, line, "replace() count must be an integer");
            count = z.i;
        }
        *out = s_replace(r, s, x, y, count);
        return 0;
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "count")) {
        if (!s_arg(a, 0, NULL, &x) || x.t != V_STR)
            return s_fail(r, line, "%s() argument must be str", m);
        size_t cnt;
        size_t *off = s_cp_offsets(r, s, &cnt);
        int64_t found = -1, num = 0;
        for (size_t i = 0; i <= cnt; i++) {
            if (s.s.n - off[i] < x.s.n)
                break;
            if (memcmp(s.s.p + off[i], x.s.p, x.s.n) == 0) {
                if (found < 0 || m[0] == 'r')
                    found = (int64_t)i;
                num++;
                if (!strcmp(m, "count") && x.s.n) {
                    size_t e = off[i] + x.s.n;
                    while (i < cnt && off[i + 1] < e)
                        i++;
                }
                if (m[0] == 'f' || m[0] == 'i')
                    break;
            }
        }
        if (!strcmp(m, "count"))
            *out = s_int(num);
        else if (m[0] == 'i' && found < 0)
            return s_fail(r, line, "substring not found");
        else
            *out = s_int(found);
        return 0;
    }
    if (!strcmp(m, "join")) {
        if (!s_arg(a, 0, NULL, &x))
            return s_fail(r, line, "join() takes exactly one argument");
        jlist *it;
        if (s_iter(r, x, &it, line) < 0)
            return -EINVAL;
        sbuf b;
        s_sb_init(&b, &r->a);
        for (size_t i = 0; i < it->n; i++) {
            if (it->v[i].t != V_STR)
                return s_fail(r, line, "sequence item %zu: expected str instance, %s found", i, s_type_name(it->v[i]));
            if (i)
                s_sb_put(&b, s.s.p, s.s.n);
            s_sb_put(&b, it->v[i].s.p, it->v[i].s.n);
        }
        *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
        return 0;
    }
    if (!strcmp(m, "splitlines")) {
        jlist *l = s_list_new(&r->a, 0);
        const char *p = s.s.p, *end = s.s.p + s.s.n;
        while (p < end) {
            const char *q = p;
            while (q < end && *q != '\n' && *q != '\r')
                q++;
            s_list_push(&r->a, l, s_substr(r, p, (size_t)(q - p)));
            if (q < end && *q == '\r' && q + 1 < end && q[1] == '\n')
                q++;
            p = q + 1;
        }
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        if (!s_arg(a, 0, NULL, &x) || x.t != V_STR)
            return s_fail(r, line, "%s() argument must be str", m);
        bool suffix = m[6] == 's';
        if (s_affix(s, x, suffix))
            *out = suffix ? s_substr(r, s.s.p, s.s.n - x.s.n) : s_substr(r, s.s.p + x.s.n, s.s.n - x.s.n);
        else
            *out = s;
        return 0;
    }
    if (!strncmp(m, "is", 2)) {
        size_t i = 0;
        bool res = s.s.n > 0, any_cased = false;
        while (i < s.s.n) {
            int32_t c = s_u8_next(s.s.p, s.s.n, &i);
            utf8proc_category_t cat = utf8proc_category(c);
            bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
            bool digit = cat == UTF8PROC_CATEGORY_ND;
            if (!strcmp(m, "isdigit") || !strcmp(m, "isdecimal") || !strcmp(m, "isnumeric")) res = res && digit;
            else if (!strcmp(m, "isalpha")) res = res && letter;
            else if (!strcmp(m, "isalnum")) res = res && (letter || digit);
            else if (!strcmp(m, "isspace")) res = res && s_py_space(c);
            else if (!strcmp(m, "islower")) { if (utf8proc_isupper(c)) res = false; if (utf8proc_islower(c)) any_cased = true; }
            else if (!strcmp(m, "isupper")) { if (utf8proc_islower(c)) res = false; if (utf8proc_isupper(c)) any_cased = true; }
            else return s_fail(r, line, "str.%s is not supported", m);
        }
        if (!strcmp(m, "islower") || !strcmp(m, "isupper"))
            res = res && any_cased;
        *out = s_bool(res);
        return 0;
    }
    if (!strcmp(m, "center") || !strcmp(m, "ljust") || !strcmp(m, "rjust") || !strcmp(m, "zfill")) {
        if (!s_arg(a, 0, "width", &x) || (x.t != V_INT && x.t != V_BOOL))
            return s_fail(r, line, "%s() needs an integer width", m);
        jv fill = s_strz(m[0] == 'z' ? "0" : " ");
        if (m[0] != 'z' && s_arg(a, 1, "fillchar", &y)) {
            if (y.t != V_STR || s_u8_len(y.s.p, y.s.n) != 1)
                return s_fail(r, line, "The fill character must be exactly one character long");
            fill = y;
        }
        int64_t n = (int64_t)s_u8_len(s.s.p, s.s.n), w = x.i;
        if (w <= n) {
            *out = s;
            return 0;
        }
        int64_t pad = w - n, left = m[0] == 'c' ? pad / 2 + (pad & w & 1) : m[0] == 'l' ? 0 : pad;
        sbuf b;
        s_sb_init(&b, &r->a);
        size_t body = 0;
        if (m[0] == 'z' && s.s.n && (s.s.p[0] == '-' || s.s.p[0] == '+')) {
            s_sb_putc(&b, s.s.p[0]);
            body = 1;
        }
        for (int64_t i = 0; i < left; i++)
            s_sb_put(&b, fill.s.p, fill.s.n);
        s_sb_put(&b, s.s.p + body, s.s.n - body);
        for (int64_t i = 0; i < pad - left; i++)
            s_sb_put(&b, fill.s.p, fill.s.n);
        *out = s_str(b.p, b.n);
        return 0;
    }
    if (!strcmp(m, "format")) {
        /* "{}" / "{0}" / "{name}" replacement fields with str() conversion */
        sbuf b;
        s_sb_init(&b, &r->a);
        size_t auto_i = 0;
        for (size_t i = 0; i < s.s.n; i++) {
            char c = s.s.p[i];
            if (c == '{' && i + 1 < s.s.n && s.s.p[i + 1] == '{') { s_sb_putc(&b, '{'); i++; continue; }
            if (c == '}' && i + 1 < s.s.n && s.s.p[i + 1] == '}') { s_sb_putc(&b, '}'); i++; continue; }
            if (c != '{') { s_sb_putc(&b, c); continue; }
            const char *close = memchr(s.s.p + i, '}', s.s.n - i);
            if (!close)
                return s_fail(r, line, "Single '{' encountered in format string");
            const char *f = s.s.p + i + 1;
            size_t fn = (size_t)(close - f);
            jv v;
            bool ok;
            if (fn == 0)
                ok = s_arg(a, auto_i++, NULL, &v);
            else if (f[0] >= '0' && f[0] <= '9')
                ok = s_arg(a, (size_t)atoi(f), NULL, &v);
            else {
                char *nm = s_strndup(&r->a, f, fn);
                ok = s_arg(a, (size_t)-1, nm, &v);
            }
            if (!ok)
                return s_fail(r, line, "format(): replacement field out of range");
            s_fmt(&b, v, false);
            i = (size_t)(close - s.s.p);
        }
        *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
        return 0;
    }
    return s_fail(r, line, "str.%s() is not supported", m);
}

/* ---- calls, filters, tests --------------------------------------------------------------------- */

static int s_eval(rctx *r, node *x, frame *f, jv *out);
static int s_exec(rctx *r, nlist *body, frame *f);
static int s_call(rctx *r, jv fn, const args *a, jv *out, int line);
static int s_apply_test(rctx *r, const char *name, jv v, const args *a, bool *ret, int line);
static int s_apply_filter(rctx *r, const char *name, jv v, const args *a, frame *f, jv *out, int line);

static int s_list_method(rctx *r, jv self, const char *m, const args *a, jv *out, int line) {
    jv x;
    if (!strcmp(m, "index") || !strcmp(m, "count")) {
        if (!s_arg(a, 0, NULL, &x))
            return s_fail(r, line, "list.%s() takes one argument", m);
        int64_t cnt = 0, idx = -1;
        for (size_t i = 0; i < self.l->n; i++)
            if (s_eq(self.l->v[i], x)) {
                if (idx < 0)
                    idx = (int64_t)i;
                cnt++;
            }
        if (m[0] == 'c')
            *out = s_int(cnt);
        else if (idx < 0)
            return s_fail(r, line, "value is not in list");
        else
            *out = s_int(idx);
        return 0;
    }
    if (!strcmp(m, "copy")) {
        *out = self;
        return 0;
    }
    return s_fail(r, line, "access to attribute '%s' of '%s' object is unsafe.", m, s_type_name(self));
}

static int s_dict_method(rctx *r, jv self, const char *m, const args *a, jv *out, int line) {
    jdict *d = self.d;
    if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
        jlist *l = s_list_new(&r->a, d->n);
        for (size_t i = 0; i < d->n; i++) {
            if (m[0] == 'i') {
                jlist *pair = s_list_new(&r->a, 2);
                s_list_push(&r->a, pair, d->k[i]);
                s_list_push(&r->a, pair, d->v[i]);
                jv t = s_listv(pair);
                t.tuple = 1;
                s_list_push(&r->a, l, t);
            } else
                s_list_push(&r->a, l, m[0] == 'k' ? d->k[i] : d->v[i]);
        }
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(m, "get")) {
        jv k, def = s_none;
        if (!s_arg(a, 0, NULL, &k))
            return s_fail(r, line, "get expected at least 1 argument");
        s_arg(a, 1, NULL, &def);
        jv *v = s_dict_find(d, k);
        *out = v ? *v : def;
        return 0;
    }
    if (!strcmp(m, "copy")) {
        jdict *c = s_dict_new(&r->a);
        for (size_t i = 0; i < d->n; i++)
            s_dict_set(&r->a, c, d->k[i], d->v[i]);
        *out = s_dictv(c);
        return 0;
    }
    return s_fail(r, line, "access to attribute '%s' of 'dict' object is unsafe.", m);
}

static int s_call_macro(rctx *r, jfn *fn, const args *a, jv *out, int line) {
    node *def = fn->def;
    if (r->depth > 200)
        return s_fail(r, line, "maximum recursion depth exceeded");
    frame *f = s_frame_new(r, fn->closure);
    size_t np = def->nnames;
    for (size_t i = 0; i < np; i++) {
        jv v;
        if (!s_arg(a, i, def->names[i], &v)) {
            if (def->l1.v[i]) {
                if (s_eval(r, def->l1.v[i], f, &v) < 0)
                    return -EINVAL;
            } else
                v = s_undef_named(def->names[i]);
        }
        s_frame_set(r, f, def->names[i], v);
    }
    jlist *varargs = s_list_new(&r->a, 0);
    for (size_t i = np; i < a->npos; i++)
        s_list_push(&r->a, varargs, a->pos[i]);
    jv va = s_listv(varargs);
    va.tuple = 1;
    s_frame_set(r, f, "varargs", va);
    jdict *kw = s_dict_new(&r->a);
    for (size_t i = 0; i < a->nkw; i++) {
        bool is_param = false;
        for (size_t j = 0; j < np; j++)
            if (!strcmp(def->names[j], a->kw[i]))
                is_param = true;
        if (!is_param) {
            if (!strcmp(a->kw[i], "caller") && fn->k == FN_MACRO)
                continue;
            s_dict_set(&r->a, kw, s_strz(a->kw[i]), a->kwv[i]);
        }
    }
    s_frame_set(r, f, "kwargs", s_dictv(kw));
    if (fn->caller)
        s_frame_set(r, f, "caller", (jv){.t = V_FUNC, .fn = fn->caller});
    sbuf b, *saved = r->out;
    s_sb_init(&b, &r->a);
    r->out = &b;
    r->depth++;
    int rc = s_exec(r, &def->d->l1, f);
    r->depth--;
    r->out = saved;
    if (rc < 0)
        return rc;
    *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
    return 0;
}

static int s_builtin(rctx *r, const char *name, const args *a, jv *out, int line) {
    jv x;
    if (!strcmp(name, "raise_exception")) {
        jv msg = s_arg(a, 0, "message", &x) ? s_tostr(r, x) : s_strz("");
        return s_fail(r, line, "%s", msg.s.p);
    }
    if (!strcmp(name, "strftime_now")) {
        if (!s_arg(a, 0, "format", &x) || x.t != V_STR)
            return s_fail(r, line, "strftime_now() needs a format string");
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        char buf[512];
        size_t n = strftime(buf, sizeof(buf), x.s.p, &tmv);
        *out = s_substr(r, buf, n);
        return 0;
    }
    if (!strcmp(name, "range")) {
        int64_t v[3] = {0, 0, 1};
        if (a->npos < 1 || a->npos > 3)
            return s_fail(r, line, "range expected 1 to 3 arguments");
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].t != V_INT && a->pos[i].t != V_BOOL)
                return s_fail(r, line, "range() arguments must be integers");
        }
        if (a->npos == 1)
            v[1] = a->pos[0].i;
        else {
            v[0] = a->pos[0].i;
            v[1] = a->pos[1].i;
            if (a->npos == 3)
                v[2] = a->pos[2].i;
        }
        if (v[2] == 0)
            return s_fail(r, line, "range() arg 3 must not be zero");
        jlist *l = s_list_new(&r->a, 0);
        for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
            if (l->n > 100000)
                return s_fail(r, line, "range too big");
            s_list_push(&r->a, l, s_int(i));
        }
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        jdict *d = s_dict_new(&r->a);
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].t != V_DICT && a->pos[i].t != V_NS)
                return s_fail(r, line, "%s() positional argument must be a mapping", name);
            for (size_t j = 0; j < a->pos[i].d->n; j++)
                s_dict_set(&r->a, d, a->pos[i].d->k[j], a->pos[i].d->v[j]);
        }
        for (size_t i = 0; i < a->nkw; i++)
            s_dict_set(&r->a, d, s_strz(a->kw[i]), a->kwv[i]);
        *out = (jv){.t = name[0] == 'n' ? V_NS : V_DICT, .d = d};
        return 0;
    }
    return s_fail(r, line, "'%s' is not callable", name);
}

static int s_call(rctx *r, jv fn, const args *a, jv *out, int line) {
    if (fn.t == V_UNDEF)
        return s_undef_err(r, line, fn);
    if (fn.t != V_FUNC)
        return s_fail(r, line, "'%s' object is not callable", s_type_name(fn));
    jfn *F = fn.fn;
    switch (F->k) {
    case FN_BUILTIN:
        return s_builtin(r, F->name, a, out, line);
    case FN_MACRO:
    case FN_CALLER:
        return s_call_macro(r, F, a, out, line);
    case FN_METHOD:
        switch (F->self.t) {
        case V_STR:
            return s_str_method(r, F->self, F->name, a, out, line);
        case V_DICT:
            return s_dict_method(r, F->self, F->name, a, out, line);
        case V_LIST:
            return s_list_method(r, F->self, F->name, a, out, line);
        case V_LOOP:
            if (a->npos == 0)
                return s_fail(r, line, "no items for cycling given");
            *out = a->pos[F->self.loop->i % a->npos];
            return 0;
        default:
            break;
        }
    }
    return s_fail(r, line, "object is not callable");
}

/* attribute lookup by a dotted path ("a.b", "0") as filters' attribute= does */
static int s_attr_path(rctx *r, jv v, jv path, jv *out, int line) {
    if (path.t == V_INT)
        return s_getitem(r, v, path, out, line);
    if (path.t != V_STR)
        return s_fail(r, line, "attribute must be a string or an integer");
    const char *p = path.s.p, *end = p + path.s.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot)
            dot = end;
        char *part = s_strndup(&r->a, p, (size_t)(dot - p));
        jv key;
        if (part[0] >= '0' && part[0] <= '9')
            key = s_int(atoll(part));
        else
            key = s_strz(part);
        if (v.t == V_UNDEF) {
            *out = v;
            return 0;
        }
        if (s_getitem(r, v, key, &v, line) < 0)
            return -EINVAL;
        p = dot + 1;
        if (dot == end)
            break;
    }
    *out = v;
    return 0;
}

static int s_sort_list(rctx *r, jlist *l, jv *attr, bool reverse, bool case_sensitive, int line) {
    /* stable insertion sort on keys */
    size_t n = l->n;
    jv *keys = s_alloc(&r->a, (n ? n : 1) * sizeof(jv));
    for (size_t i = 0; i < n; i++) {
        jv k = l->v[i];
        if (attr && s_attr_path(r, k, *attr, &k, line) < 0)
            return -EINVAL;
        if (!case_sensitive && k.t == V_STR)
            k = s_case(r, k, 0);
        keys[i] = k;
    }
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            int c;
            if (s_cmp_order(r, keys[j - 1], keys[j], &c, line) < 0)
                return -EINVAL;
            if (reverse ? c >= 0 : c <= 0)
                break;
            jv t = keys[j]; keys[j] = keys[j - 1]; keys[j - 1] = t;
            t = l->v[j]; l->v[j] = l->v[j - 1]; l->v[j - 1] = t;
        }
    return 0;
}

static jlist *s_copy_list(rctx *r, jlist *src) {
    jlist *l = s_list_new(&r->a, src->n);
    for (size_t i = 0; i < src->n; i++)
        s_list_push(&r->a, l, src->v[i]);
    return l;
}

/* select/reject/selectattr/rejectattr/map */
static int s_filter_seq(rctx *r, const char *name, jv v, const args *a, frame *f, jv *out, int line) {
    jlist *it;
    if (!s_truthy(v)) /* jinja2: `if value:` guards the iteration */
        it = s_list_new(&r->a, 0);
    else if (s_iter(r, v, &it, line) < 0)
        return -EINVAL;
    jlist *res = s_list_new(&r->a, 0);
    bool is_map = !strcmp(name, "map");
    bool attr = strstr(name, "attr") != NULL;
    bool reject = name[0] == 'r';
    if (is_map) {
        jv at, def;
        bool has_def = s_arg(a, (size_t)-1, "default", &def);
        if (s_arg(a, (size_t)-1, "attribute", &at)) {
            for (size_t i = 0; i < it->n; i++) {
                jv x;
                if (s_attr_path(r, it->v[i], at, &x, line) < 0)
                    return -EINVAL;
                if (x.t == V_UNDEF && has_def)
                    x = def;
                s_list_push(&r->a, res, x);
            }
        } else {
            jv fname;
            if (!s_arg(a, 0, NULL, &fname) || fname.t != V_STR)
                return s_fail(r, line, "map requires a filter argument");
            args sub = {a->pos + 1, a->npos - 1, a->kw, a->kwv, a->nkw};
            for (size_t i = 0; i < it->n; i++) {
                jv x;
                if (s_apply_filter(r, fname.s.p, it->v[i], &sub, f, &x, line) < 0)
                    return -EINVAL;
                s_list_push(&r->a, res, x);
            }
        }
        *out = s_listv(res);
        return 0;
    }
    size_t off = 0;
    jv at = s_undef;
    if (attr) {
        if (!s_arg(a, 0, NULL, &at))
            return s_fail(r, line, "%s requires an attribute argument", name);
        off = 1;
    }
    jv tname;
    bool has_test = s_arg(a, off, NULL, &tname);
    if (has_test && tname.t != V_STR)
        return s_fail(r, line, "%s: test name must be a string", name);
    args sub = {a->npos > off + 1 ? a->pos + off + 1 : NULL, a->npos > off + 1 ? a->npos - off - 1 : 0, a->kw, a->kwv,
                a->nkw};
    for (size_t i = 0; i < it->n; i++) {
        jv x = it->v[i];
        if (attr && s_attr_path(r, x, at, &x, line) < 0)
            return -EINVAL;
        bool ok;
        if (has_test) {
            if (s_apply_test(r, tname.s.p, x, &sub, &ok, line) < 0)
                return -EINVAL;
        } else
            ok = s_truthy(x);
        if (ok != reject)
            s_list_push(&r->a, res, it->v[i]);
    }
    *out = s_listv(res);
    return 0;
}

static int s_apply_filter(rctx *r, const char *name, jv v, const args *a, frame *f, jv *out, int line) {
    jv x, y;
    if (!strcmp(name, "tojson")) {
        jsonopt o = {.ensure_ascii = false, .item_sep = ", ", .key_sep = ": "};
        if (s_arg(a, 0, "ensure_ascii", &x))
            o.ensure_ascii = s_truthy(x);
        if (s_arg(a, 1, "indent", &x) && x.t != V_NONE) {
            o.has_indent = true;
            o.item_sep = ",";
            if (x.t == V_INT) {
                int64_t n = x.i < 0 ? 0 : x.i;
                char *sp = s_alloc(&r->a, (size_t)n + 1);
                memset(sp, ' ', (size_t)n);
                sp[n] = 0;
                o.indent = sp;
                o.indent_n = (size_t)n;
            } else if (x.t == V_STR) {
                o.indent = x.s.p;
                o.indent_n = x.s.n;
            } else
                return s_fail(r, line, "tojson indent must be an integer or a string");
        }
        if (s_arg(a, 2, "separators", &x) && x.t != V_NONE) {
            if (x.t != V_LIST || x.l->n != 2 || x.l->v[0].t != V_STR || x.l->v[1].t != V_STR)
                return s_fail(r, line, "tojson separators must be a pair of strings");
            o.item_sep = x.l->v[0].s.p;
            o.key_sep = x.l->v[1].s.p;
        }
        if (s_arg(a, 3, "sort_keys", &x))
            o.sort_keys = s_truthy(x);
        sbuf b;
        s_sb_init(&b, &r->a);
        if (s_json(r, &b, v, &o, 0, line) < 0)
            return -EINVAL;
        *out = s_str(b.p, b.n);
        return 0;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (v.t) {
        case V_UNDEF: *out = s_int(0); return 0;
        case V_STR: *out = s_int((int64_t)s_u8_len(v.s.p, v.s.n)); return 0;
        case V_LIST: *out = s_int((int64_t)v.l->n); return 0;
        case V_DICT: *out = s_int((int64_t)v.d->n); return 0;
        default: return s_fail(r, line, "object of type '%s' has no len()", s_type_name(v));
        }
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        jv def = s_str("", 0);
        s_arg(a, 0, "default_value", &def);
        bool boolean = s_arg(a, 1, "boolean", &x) && s_truthy(x);
        *out = (v.t == V_UNDEF || (boolean && !s_truthy(v))) ? def : v;
        return 0;
    }
    if (!strcmp(name, "trim")) {
        jv s = s_tostr(r, v);
        bool has = s_arg(a, 0, "chars", &x) && x.t == V_STR;
        *out = s_strip(r, s, has ? &x : NULL, 3);
        return 0;
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "capitalize")) {
        jv s = s_tostr(r, v);
        *out = s_case(r, s, name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : 2);
        return 0;
    }
    if (!strcmp(name, "title")) {
        *out = s_case(r, s_tostr(r, v), 5);
        return 0;
    }
    if (!strcmp(name, "string")) {
        *out = s_tostr(r, v);
        return 0;
    }
    if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape") || !strcmp(name, "forceescape")) {
        if (name[0] == 's') {
            *out = v.t == V_STR ? v : s_tostr(r, v);
            return 0;
        }
        jv s = s_tostr(r, v);
        sbuf b;
        s_sb_init(&b, &r->a);
        for (size_t i = 0; i < s.s.n; i++) {
            char c = s.s.p[i];
            if (c == '&') s_sb_puts(&b, "&amp;");
            else if (c == '<') s_sb_puts(&b, "&lt;");
            else if (c == '>') s_sb_puts(&b, "&gt;");
            else if (c == '"') s_sb_puts(&b, "&#34;");
            else if (c == '\'') s_sb_puts(&b, "&#39;");
            else s_sb_putc(&b, c);
        }
        *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
        return 0;
    }
    if (!strcmp(name, "join")) {
        jv sep = s_str("", 0);
        s_arg(a, 0, "d", &sep);
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        bool has_attr = s_arg(a, 1, "attribute", &y);
        sep = s_tostr(r, sep);
        sbuf b;
        s_sb_init(&b, &r->a);
        for (size_t i = 0; i < it->n; i++) {
            jv e = it->v[i];
            if (has_attr && s_attr_path(r, e, y, &e, line) < 0)
                return -EINVAL;
            if (i)
                s_sb_put(&b, sep.s.p, sep.s.n);
            s_fmt(&b, e, false);
        }
        *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
        return 0;
    }
    if (!strcmp(name, "map") || !strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
        !strcmp(name, "rejectattr"))
        return s_filter_seq(r, name, v, a, f, out, line);
    if (!strcmp(name, "items")) {
        if (v.t == V_UNDEF) {
            *out = s_listv(s_list_new(&r->a, 0));
            return 0;
        }
        if (v.t != V_DICT && v.t != V_NS)
            return s_fail(r, line, "Can only get item pairs from a mapping.");
        args none = {0};
        return s_dict_method(r, (jv){.t = V_DICT, .d = v.d}, "items", &none, out, line);
    }
    if (!strcmp(name, "list")) {
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        *out = s_listv(s_copy_list(r, it));
        return 0;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        if (it->n == 0)
            *out = s_undef_named("first");
        else
            *out = name[0] == 'f' ? it->v[0] : it->v[it->n - 1];
        return 0;
    }
    if (!strcmp(name, "reverse")) {
        if (v.t == V_STR) {
            jv m1 = s_int(-1);
            return s_slice(r, v, NULL, NULL, &m1, out, line);
        }
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        jlist *l = s_list_new(&r->a, it->n);
        for (size_t i = it->n; i > 0; i--)
            s_list_push(&r->a, l, it->v[i - 1]);
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(name, "sort")) {
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        jlist *l = s_copy_list(r, it);
        bool reverse = s_arg(a, 0, "reverse", &x) && s_truthy(x);
        bool cs = s_arg(a, 1, "case_sensitive", &x) && s_truthy(x);
        bool has_attr = s_arg(a, 2, "attribute", &y);
        if (s_sort_list(r, l, has_attr ? &y : NULL, reverse, cs, line) < 0)
            return -EINVAL;
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(name, "dictsort")) {
        if (v.t != V_DICT)
            return s_fail(r, line, "dictsort requires a mapping");
        args none = {0};
        jv items;
        s_dict_method(r, v, "items", &none, &items, line);
        bool cs = s_arg(a, 0, "case_sensitive", &x) && s_truthy(x);
        jv by = s_strz("key");
        s_arg(a, 1, "by", &by);
        bool reverse = s_arg(a, 2, "reverse", &x) && s_truthy(x);
        jv idx = s_int(by.t == V_STR && !strcmp(by.s.p, "value") ? 1 : 0);
        if (s_sort_list(r, items.l, &idx, reverse, cs, line) < 0)
            return -EINVAL;
        *out = items;
        return 0;
    }
    if (!strcmp(name, "unique")) {
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        jlist *l = s_list_new(&r->a, 0), *keys = s_list_new(&r->a, 0);
        bool cs = s_arg(a, 0, "case_sensitive", &x) && s_truthy(x);
        bool has_attr = s_arg(a, 1, "attribute", &y);
        for (size_t i = 0; i < it->n; i++) {
            jv k = it->v[i];
            if (has_attr && s_attr_path(r, k, y, &k, line) < 0)
                return -EINVAL;
            if (!cs && k.t == V_STR)
                k = s_case(r, k, 0);
            bool seen = false;
            for (size_t j = 0; j < keys->n && !seen; j++)
                seen = s_eq(keys->v[j], k);
            if (!seen) {
                s_list_push(&r->a, keys, k);
                s_list_push(&r->a, l, it->v[i]);
            }
        }
        *out = s_listv(l);
        return 0;
    }
    if (!strcmp(name, "replace")) {
        jv s = s_tostr(r, v);
        if (!s_arg(a, 0, "old", &x) || !s_arg(a, 1, "new", &y))
            return s_fail(r, line, "replace filter needs old and new");
        x = s_tostr(r, x);
        y = s_tostr(r, y);
        jv c;
        int64_t count = -1;
        if (s_arg(a, 2, "count", &c) && c.t == V_INT)
            count = c.i;
        *out = s_replace(r, s, x, y, count);
        return 0;
    }
    if ((!strcmp(name, "int") || !strcmp(name, "float") || !strcmp(name, "abs") || !strcmp(name, "round")) &&
        v.t == V_UNDEF)
        return s_undef_err(r, line, v);
    if (!strcmp(name, "int")) {
        int64_t def = 0;
        if (s_arg(a, 0, "default", &x) && x.t == V_INT)
            def = x.i;
        if (v.t == V_INT || v.t == V_BOOL)
            *out = s_int(v.i);
        else if (v.t == V_FLOAT && !(v.f > -9.2e18 && v.f < 9.2e18))
            return s_fail(r, line, isfinite(v.f) ? "integer overflow (Python ints are unbounded; this renderer's are 64-bit)"
                                                 : "cannot convert float infinity or NaN to integer");
        else if (v.t == V_FLOAT)
            *out = s_int((int64_t)v.f);
        else if (v.t == V_STR) {
            jv t = s_strip(r, v, NULL, 3); /* int(" 42 ") == 42 */
            char *end;
            errno = 0;
            long long n = strtoll(t.s.p, &end, 10);
            if (errno || end == t.s.p || *end) {
                double d = strtod(t.s.p, &end);
                *out = (end != t.s.p && !*end && d > -9.2e18 && d < 9.2e18) ? s_int((int64_t)d) : s_int(def);
            } else
                *out = s_int(n);
        } else
            *out = s_int(def);
        return 0;
    }
    if (!strcmp(name, "float")) {
        double def = 0;
        if (s_arg(a, 0, "default", &x) && s_is_num(x))
            def = s_num(x);
        if (s_is_num(v))
            *out = s_float(s_num(v));
        else if (v.t == V_STR) {
            jv t = s_strip(r, v, NULL, 3); /* float(" -0.5 ") == -0.5 */
            char *end;
            double d = strtod(t.s.p, &end);
            *out = s_float(end != t.s.p && !*end ? d : def);
        } else
            *out = s_float(def);
        return 0;
    }
    if (!strcmp(name, "abs")) {
        if (!s_is_num(v))
            return s_fail(r, line, "bad operand type for abs(): '%s'", s_type_name(v));
        *out = v.t == V_FLOAT ? s_float(fabs(v.f)) : s_int(v.i < 0 ? -v.i : v.i);
        return 0;
    }
    if (!strcmp(name, "round")) {
        int64_t prec = 0;
        if (s_arg(a, 0, "precision", &x) && x.t == V_INT)
            prec = x.i;
        jv method = s_strz("common");
        s_arg(a, 1, "method", &method);
        if (!s_is_num(v))
            return s_fail(r, line, "round filter needs a number");
        if (v.t != V_FLOAT && (method.t != V_STR || !strcmp(method.s.p, "common")) && prec >= 0) {
            *out = s_int(v.i); /* Python: round(int, n) is an int */
            return 0;
        }
        double m = pow(10, (double)prec), d = s_num(v) * m;
        if (method.t == V_STR && !strcmp(method.s.p, "floor"))
            *out = s_float(floor(d) / m);
        else if (method.t == V_STR && !strcmp(method.s.p, "ceil"))
            *out = s_float(ceil(d) / m);
        else if (prec >= 0 && prec < 300 && isfinite(s_num(v))) {
            /* Python round(): correctly rounded on the exact binary value, ties to even, as glibc's %f */
            char buf[400];
            snprintf(buf, sizeof(buf), "%.*f", (int)prec, s_num(v));
            *out = s_float(strtod(buf, NULL));
        } else
            *out = s_float(nearbyint(d) / m);
        return 0;
    }
    if (!strcmp(name, "sum") || !strcmp(name, "min") || !strcmp(name, "max")) {
        jlist *it;
        if (s_iter(r, v, &it, line) < 0)
            return -EINVAL;
        bool has_attr = s_arg(a, name[1] == 'u' ? 0 : 1, "attribute", &y);
        jv acc = name[1] == 'u' ? s_int(0) : s_undef;
        if (name[1] == 'u' && s_arg(a, 1, "start", &x))
            acc = x;
        for (size_t i = 0; i < it->n; i++) {
            jv e = it->v[i];
            if (has_attr && s_attr_path(r, e, y, &e, line) < 0)
                return -EINVAL;
            if (name[1] == 'u') {
                if (s_arith(r, OP_ADD, acc, e, &acc, line) < 0)
                    return -EINVAL;
            } else if (acc.t == V_UNDEF)
                acc = e;
            else {
                int c;
                jv ke = e, ka = acc; /* case_sensitive=False by default: compare lowercased strings */
                if (!(s_arg(a, 0, "case_sensitive", &x) && s_truthy(x)) && e.t == V_STR && acc.t == V_STR) {
                    ke = s_case(r, e, 0);
                    ka = s_case(r, acc, 0);
                }
                if (s_cmp_order(r, ke, ka, &c, line) < 0)
                    return -EINVAL;
                if ((name[1] == 'i' && c < 0) || (name[1] == 'a' && c > 0))
                    acc = e;
            }
        }
        *out = acc;
        return 0;
    }
    if (!strcmp(name, "attr")) {
        if (!s_arg(a, 0, "name", &x) || x.t != V_STR)
            return s_fail(r, line, "attr filter needs a name");
        return s_getattr(r, v, x.s.p, out, line);
    }
    if (!strcmp(name, "indent")) {
        jv s = s_tostr(r, v);
        jv w = s_int(4);
        s_arg(a, 0, "width", &w);
        bool first = s_arg(a, 1, "first", &x) && s_truthy(x);
        bool blank = s_arg(a, 2, "blank", &y) && s_truthy(y);
        sbuf ind;
        s_sb_init(&ind, &r->a);
        if (w.t == V_STR)
            s_sb_put(&ind, w.s.p, w.s.n);
        else
            for (int64_t i = 0; i < w.i; i++)
                s_sb_putc(&ind, ' ');
        /* jinja2: s += "\n"; lines = s.splitlines(); first line unindented unless first=True */
        jlist *lines = s_list_new(&r->a, 0);
        {
            const char *p = s.s.p, *end = s.s.p + s.s.n;
            while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *le = nl ? nl : end;
                s_list_push(&r->a, lines, s_substr(r, p, (size_t)(le - p)));
                p = nl ? nl + 1 : end;
            }
            if (lines->n == 0)
                s_list_push(&r->a, lines, s_str("", 0));
        }
        sbuf b;
        s_sb_init(&b, &r->a);
        if (first)
            s_sb_put(&b, ind.p, ind.n);
        for (size_t i = 0; i < lines->n; i++) {
            jv ln = lines->v[i];
            if (i) {
                s_sb_putc(&b, '\n');
                if (blank || ln.s.n)
                    s_sb_put(&b, ind.p, ind.n);
            }
            s_sb_put(&b, ln.s.p, ln.s.n);
        }
        *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
        return 0;
    }
    if (!strcmp(name, "format")) { /* jinja2: str(value) % args */
        jlist *t = s_list_new(&r->a, a->npos);
        for (size_t i = 0; i < a->npos; i++)
            s_list_push(&r->a, t, a->pos[i]);
        jv tup = s_listv(t);
        tup.tuple = 1;
        return s_arith(r, OP_MOD, s_tostr(r, v), tup, out, line);
    }
    if (!strcmp(name, "wordcount")) { /* jinja2: len(re.findall(r"\w+", str(value))) */
        jv s = s_tostr(r, v);
        size_t i = 0;
        int64_t words = 0;
        bool in_word = false;
        while (i < s.s.n) {
            int32_t c = s_u8_next(s.s.p, s.s.n, &i);
            utf8proc_category_t cat = utf8proc_category(c);
            bool w = c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                     (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
            if (w && !in_word)
                words++;
            in_word = w;
        }
        *out = s_int(words);
        return 0;
    }
    if (!strcmp(name, "center")) {
        jv s = s_tostr(r, v);
        int64_t w = 80;
        if (s_arg(a, 0, "width", &x) && x.t == V_INT)
            w = x.i;
        int64_t n = (int64_t)s_u8_len(s.s.p, s.s.n);
        if (w <= n) {
            *out = s;
            return 0;
        }
        int64_t pad = w - n, left = pad / 2 + (pad & w & 1);
        sbuf b;
        s_sb_init(&b, &r->a);
        for (int64_t i = 0; i < left; i++) s_sb_putc(&b, ' ');
        s_sb_put(&b, s.s.p, s.s.n);
        for (int64_t i = 0; i < pad - left; i++) s_sb_putc(&b, ' ');
        *out = s_str(b.p, b.n);
        return 0;
    }
    return s_fail(r, line, "No filter named '%s'.", name);
}

static int s_apply_test(rctx *r, const char *name, jv v, const args *a, bool *ret, int line) {
    jv x;
    bool has = s_arg(a, 0, NULL, &x);
    if (!strcmp(name, "defined")) *ret = v.t != V_UNDEF;
    else if (!strcmp(name, "undefined")) *ret = v.t == V_UNDEF;
    else if (!strcmp(name, "none")) *ret = v.t == V_NONE;
    else if (!strcmp(name, "string")) *ret = v.t == V_STR;
    else if (!strcmp(name, "mapping")) *ret = v.t == V_DICT;
    else if (!strcmp(name, "iterable")) *ret = v.t == V_LIST || v.t == V_DICT || v.t == V_STR || v.t == V_UNDEF;
    else if (!strcmp(name, "sequence")) *ret = v.t == V_LIST || v.t == V_DICT || v.t == V_STR || v.t == V_UNDEF;
    else if (!strcmp(name, "number")) *ret = s_is_num(v);
    else if (!strcmp(name, "integer")) *ret = v.t == V_INT;
    else if (!strcmp(name, "float")) *ret = v.t == V_FLOAT;
    else if (!strcmp(name, "boolean")) *ret = v.t == V_BOOL;
    else if (!strcmp(name, "true")) *ret = v.t == V_BOOL && v.i;
    else if (!strcmp(name, "false")) *ret = v.t == V_BOOL && !v.i;
    else if (!strcmp(name, "callable")) *ret = v.t == V_FUNC;
    else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!s_is_num(v))
            return s_fail(r, line, "test '%s' needs a number, not %s", name, s_type_name(v));
        double m = v.t == V_FLOAT ? fmod(v.f, 2.0) : (double)(v.i % 2);
        if (m < 0)
            m += 2.0; /* Python's modulo takes the divisor's sign */
        *ret = name[0] == 'o' ? m == 1.0 : m == 0.0;
    } else if (!strcmp(name, "divisibleby")) {
        if (!has || !s_is_num(x) || !s_is_num(v) || s_num(x) == 0)
            return s_fail(r, line, "divisibleby needs a non-zero number");
        *ret = fmod(s_num(v), s_num(x)) == 0;
    } else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v.t != V_STR) {
            *ret = false;
            return 0;
        }
        args none = {0};
        jv res;
        if (s_str_method(r, v, name[0] == 'l' ? "islower" : "isupper", &none, &res, line) < 0)
            return -EINVAL;
        *ret = res.i;
    } else if (!strcmp(name, "sameas")) {
        if (!has)
            return s_fail(r, line, "sameas needs an argument");
        *ret = v.t == x.t && (v.t == V_NONE || v.t == V_UNDEF || ((v.t == V_BOOL || v.t == V_INT) && v.i == x.i) ||
                              (v.t == V_LIST && v.l == x.l) || (v.t == V_DICT && v.d == x.d) ||
                              (v.t == V_STR && s_eq(v, x)));
    } else if (!strcmp(name, "in")) {
        if (!has)
            return s_fail(r, line, "test 'in' needs an argument");
        return s_contains(r, v, x, ret, line);
    } else {
        static const char *const cmp[][2] = {{"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="},
                                             {"lt", "<"}, {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="},
                                             {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="}, {">=", ">="}};
        for (size_t i = 0; i < sizeof(cmp) / sizeof(cmp[0]); i++) {
            if (strcmp(name, cmp[i][0]))
                continue;
            if (!has)
                return s_fail(r, line, "test '%s' needs an argument", name);
            const char *op = cmp[i][1];
            if (op[0] == '=') { *ret = s_eq(v, x); return 0; }
            if (op[0] == '!') { *ret = !s_eq(v, x); return 0; }
            int c;
            if (s_cmp_order(r, v, x, &c, line) < 0)
                return -EINVAL;
            *ret = op[0] == '<' ? (op[1] ? c <= 0 : c < 0) : (op[1] ? c >= 0 : c > 0);
            return 0;
        }
        return s_fail(r, line, "No test named '%s'.", name);
    }
    return 0;
}

/* ---- evaluation --------------------------------------------------------------------------------- */

static int s_eval_args(rctx *r, node *x, frame *f, args *a) {
    a->npos = x->l1.n;
    a->pos = s_alloc(&r->a, (a->npos ? a->npos : 1) * sizeof(jv));
    for (size_t i = 0; i < x->l1.n; i++)
        if (s_eval(r, x->l1.v[i], f, &a->pos[i]) < 0)
            return -EINVAL;
    a->nkw = x->nnames;
    a->kw = x->names;
    a->kwv = s_alloc(&r->a, (a->nkw ? a->nkw : 1) * sizeof(jv));
    for (size_t i = 0; i < x->nnames; i++)
        if (s_eval(r, x->l2.v[i], f, &a->kwv[i]) < 0)
            return -EINVAL;
    return 0;
}

static int s_eval(rctx *r, node *x, frame *f, jv *out) {
    jv a, b;
    switch (x->k) {
    case E_CONST:
        *out = x->v;
        return 0;
    case E_NAME:
        *out = s_lookup(f, x->name, x->nlen);
        return 0;
    case E_HOLE:
        *out = r->hole;
        return 0;
    case E_LIST:
    case E_TUPLE: {
        jlist *l = s_list_new(&r->a, x->l1.n);
        for (size_t i = 0; i < x->l1.n; i++) {
            if (s_eval(r, x->l1.v[i], f, &a) < 0)
                return -EINVAL;
            s_list_push(&r->a, l, a);
        }
        *out = s_listv(l);
        out->tuple = x->k == E_TUPLE;
        return 0;
    }
    case E_DICT: {
        jdict *d = s_dict_new(&r->a);
        for (size_t i = 0; i < x->l1.n; i++) {
            if (s_eval(r, x->l1.v[i], f, &a) < 0 || s_eval(r, x->l2.v[i], f, &b) < 0)
                return -EINVAL;
            if (a.t == V_LIST && !a.tuple)
                return s_fail(r, x->line, "unhashable type: 'list'");
            if (a.t == V_DICT)
                return s_fail(r, x->line, "unhashable type: 'dict'");
            s_dict_set(&r->a, d, a, b);
        }
        *out = s_dictv(d);
        return 0;
    }
    case E_GETATTR:
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        return s_getattr(r, a, x->name, out, x->line);
    case E_GETITEM:
        if (s_eval(r, x->a, f, &a) < 0 || s_eval(r, x->b, f, &b) < 0)
            return -EINVAL;
        return s_getitem(r, a, b, out, x->line);
    case E_SLICE: {
        jv st, sp, step;
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        if (x->b && s_eval(r, x->b, f, &st) < 0)
            return -EINVAL;
        if (x->c && s_eval(r, x->c, f, &sp) < 0)
            return -EINVAL;
        if (x->d && s_eval(r, x->d, f, &step) < 0)
            return -EINVAL;
        return s_slice(r, a, x->b ? &st : NULL, x->c ? &sp : NULL, x->d ? &step : NULL, out, x->line);
    }
    case E_CALL: {
        args ar;
        if (s_eval(r, x->a, f, &a) < 0 || s_eval_args(r, x, f, &ar) < 0)
            return -EINVAL;
        return s_call(r, a, &ar, out, x->line);
    }
    case E_FILTER: {
        args ar;
        if (s_eval(r, x->a, f, &a) < 0 || s_eval_args(r, x, f, &ar) < 0)
            return -EINVAL;
        return s_apply_filter(r, x->name, a, &ar, f, out, x->line);
    }
    case E_TEST: {
        args ar;
        bool res;
        if (s_eval(r, x->a, f, &a) < 0 || s_eval_args(r, x, f, &ar) < 0)
            return -EINVAL;
        if (s_apply_test(r, x->name, a, &ar, &res, x->line) < 0)
            return -EINVAL;
        *out = s_bool(x->op ? !res : res);
        return 0;
    }
    case E_NEG:
    case E_POS:
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        if (a.t == V_UNDEF)
            return s_undef_err(r, x->line, a);
        if (!s_is_num(a))
            return s_fail(r, x->line, "bad operand type for unary %c: '%s'", x->k == E_NEG ? '-' : '+', s_type_name(a));
        if (x->k == E_POS)
            *out = a.t == V_BOOL ? s_int(a.i) : a;
        else if (a.t != V_FLOAT && a.i == INT64_MIN)
            return s_fail(r, x->line, "integer overflow (Python ints are unbounded; this renderer's are 64-bit)");
        else
            *out = a.t == V_FLOAT ? s_float(-a.f) : s_int(-a.i);
        return 0;
    case E_NOT:
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        *out = s_bool(!s_truthy(a));
        return 0;
    case E_BIN:
        if (s_eval(r, x->a, f, &a) < 0 || s_eval(r, x->b, f, &b) < 0)
            return -EINVAL;
        return s_arith(r, x->op, a, b, out, x->line);
    case E_AND:
    case E_OR:
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        if (s_truthy(a) == (x->k == E_OR)) {
            *out = a;
            return 0;
        }
        return s_eval(r, x->b, f, out);
    case E_CMP: {
        if (s_eval(r, x->a, f, &a) < 0)
            return -EINVAL;
        bool res = true;
        for (size_t i = 0; i < x->l1.n && res; i++) {
            if (s_eval(r, x->l1.v[i], f, &b) < 0)
                return -EINVAL;
            int op = x->ops[i], c;
            switch (op) {
            case OP_EQ: res = s_eq(a, b); break;
            case OP_NE: res = !s_eq(a, b); break;
            case OP_IN:
            case OP_NOTIN:
                if (s_contains(r, a, b, &res, x->line) < 0)
                    return -EINVAL;
                if (op == OP_NOTIN)
                    res = !res;
                break;
            default:
                if (s_cmp_order(r, a, b, &c, x->line) < 0)
                    return -EINVAL;
                res = op == OP_LT ? c < 0 : op == OP_LE ? c <= 0 : op == OP_GT ? c > 0 : c >= 0;
            }
            a = b;
        }
        *out = s_bool(res);
        return 0;
    }
    case E_COND:
        if (s_eval(r, x->b, f, &a) < 0)
            return -EINVAL;
        if (s_truthy(a))
            return s_eval(r, x->a, f, out);
        if (x->c)
            return s_eval(r, x->c, f, out);
        *out = s_undef;
        return 0;
    case E_CONCAT: {
        sbuf sb;
        s_sb_init(&sb, &r->a);
        for (size_t i = 0; i < x->l1.n; i++) {
            if (s_eval(r, x->l1.v[i], f, &a) < 0)
                return -EINVAL;
            s_fmt(&sb, a, false);
        }
        *out = sb.n ? s_str(sb.p, sb.n) : s_str("", 0);
        return 0;
    }
    default:
        return s_fail(r, x->line, "unexpected expression");
    }
}

static int s_assign(rctx *r, node *target, jv v, frame *f, int line) {
    if (target->k == E_NAME) {
        s_frame_set(r, f, target->name, v);
        return 0;
    }
    if (target->k == E_NSREF) {
        jv ns = s_lookup(f, target->a->name, target->a->nlen);
        if (ns.t != V_NS)
            return s_fail(r, line, "cannot assign attribute on non-namespace object");
        s_dict_set(&r->a, ns.d, s_strz(target->name), v);
        return 0;
    }
    /* tuple unpacking */
    jlist *it;
    if (s_iter(r, v, &it, line) < 0)
        return -EINVAL;
    if (it->n != target->l1.n)
        return s_fail(r, line, it->n > target->l1.n ? "too many values to unpack (expected %zu)"
                                                      : "not enough values to unpack (expected %zu, got %zu)",
                      target->l1.n, it->n);
    for (size_t i = 0; i < it->n; i++)
        s_frame_set(r, f, target->l1.v[i]->name, it->v[i]);
    return 0;
}

static int s_capture(rctx *r, nlist *body, frame *f, jv *out) {
    sbuf b, *saved = r->out;
    s_sb_init(&b, &r->a);
    r->out = &b;
    int rc = s_exec(r, body, f);
    r->out = saved;
    if (rc < 0)
        return rc;
    *out = b.n ? s_str(b.p, b.n) : s_str("", 0);
    return 0;
}

static int s_apply_hole(rctx *r, node *chain, jv v, frame *f, jv *out) {
    jv saved = r->hole;
    r->hole = v;
    int rc = s_eval(r, chain, f, out);
    r->hole = saved;
    return rc;
}

static int s_exec_for(rctx *r, node *x, frame *f) {
    jv seq;
    if (s_eval(r, x->b, f, &seq) < 0)
        return -EINVAL;
    jlist *it;
    if (s_iter(r, seq, &it, x->line) < 0)
        return -EINVAL;
    frame *lf = s_frame_new(r, f);
    if (x->c) {
        jlist *kept = s_list_new(&r->a, 0);
        for (size_t i = 0; i < it->n; i++) {
            jv c;
            if (s_assign(r, x->a, it->v[i], lf, x->line) < 0 || s_eval(r, x->c, lf, &c) < 0)
                return -EINVAL;
            if (s_truthy(c))
                s_list_push(&r->a, kept, it->v[i]);
        }
        it = kept;
    }
    loopst *L = s_zalloc(&r->a, sizeof(loopst));
    L->items = it;
    for (size_t i = 0; i < it->n; i++) {
        /* jinja2: names set in the body do not survive into the next iteration */
        lf = s_frame_new(r, f);
        s_frame_set(r, lf, "loop", (jv){.t = V_LOOP, .loop = L});
        L->i = i;
        if (s_assign(r, x->a, it->v[i], lf, x->line) < 0)
            return -EINVAL;
        int rc = s_exec(r, &x->d->l1, lf);
        if (rc < 0)
            return rc;
        if (rc == R_BREAK)
            break;
    }
    if (it->n == 0 && x->e)
        return s_exec(r, &x->e->l1, f);
    return 0;
}

static int s_exec_stmt(rctx *r, node *x, frame *f) {
    jv v;
    switch (x->k) {
    case S_TEXT:
        s_sb_put(r->out, x->v.s.p, x->v.s.n);
        return 0;
    case S_OUT:
        if (s_eval(r, x->a, f, &v) < 0)
            return -EINVAL;
        s_fmt(r->out, v, false);
        return 0;
    case S_BODY:
        return s_exec(r, &x->l1, f);
    case S_IF:
        for (size_t i = 0; i < x->l1.n; i++) {
            if (s_eval(r, x->l1.v[i], f, &v) < 0)
                return -EINVAL;
            if (s_truthy(v))
                return s_exec(r, &x->l2.v[i]->l1, f);
        }
        return x->c ? s_exec(r, &x->c->l1, f) : 0;
    case S_FOR:
        return s_exec_for(r, x, f);
    case S_SET:
        if (s_eval(r, x->b, f, &v) < 0)
            return -EINVAL;
        return s_assign(r, x->a, v, f, x->line);
    case S_SETBLOCK:
        if (s_capture(r, &x->d->l1, f, &v) < 0)
            return -EINVAL;
        if (x->b && s_apply_hole(r, x->b, v, f, &v) < 0)
            return -EINVAL;
        return s_assign(r, x->a, v, f, x->line);
    case S_FILTERBLOCK:
        if (s_capture(r, &x->d->l1, f, &v) < 0 || s_apply_hole(r, x->b, v, f, &v) < 0)
            return -EINVAL;
        s_fmt(r->out, v, false);
        return 0;
    case S_MACRO: {
        jfn *fn = s_zalloc(&r->a, sizeof(jfn));
        fn->k = FN_MACRO;
        fn->name = x->name;
        fn->def = x;
        fn->closure = f;
        s_frame_set(r, f, x->name, (jv){.t = V_FUNC, .fn = fn});
        return 0;
    }
    case S_CALLBLOCK: {
        node *call = x->a;
        jv fnv;
        args ar;
        if (s_eval(r, call->a, f, &fnv) < 0 || s_eval_args(r, call, f, &ar) < 0)
            return -EINVAL;
        if (fnv.t != V_FUNC || fnv.fn->k != FN_MACRO)
            return s_fail(r, x->line, "call block needs a macro");
        jfn *caller = s_zalloc(&r->a, sizeof(jfn));
        caller->k = FN_CALLER;
        caller->name = "caller";
        caller->def = x;
        caller->closure = f;
        jfn *m = s_zalloc(&r->a, sizeof(jfn));
        *m = *fnv.fn;
        m->caller = caller;
        if (s_call(r, (jv){.t = V_FUNC, .fn = m}, &ar, &v, x->line) < 0)
            return -EINVAL;
        s_fmt(r->out, v, false);
        return 0;
    }
    case S_WITH: {
        frame *wf = s_frame_new(r, f);
        for (size_t i = 0; i < x->nnames; i++) {
            if (s_eval(r, x->l1.v[i], f, &v) < 0)
                return -EINVAL;
            s_frame_set(r, wf, x->names[i], v);
        }
        return s_exec(r, &x->d->l1, wf);
    }
    case S_BREAK:
        return R_BREAK;
    case S_CONTINUE:
        return R_CONTINUE;
    default:
        return s_fail(r, x->line, "unexpected statement");
    }
}

static int s_exec(rctx *r, nlist *body, frame *f) {
    for (size_t i = 0; i < body->n; i++) {
        int rc = s_exec_stmt(r, body->v[i], f);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- public API --------------------------------------------------------------------------------- */

static jv s_from_json(rctx *r, const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jdict *d = s_dict_new(&r->a);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) s_dict_set(&r->a, d, s_strz(s_strndup(&r->a, k, strlen(k))), s_from_json(r, v));
        return s_dictv(d);
    }
    case JSON_ARRAY: {
        jlist *l = s_list_new(&r->a, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            s_list_push(&r->a, l, s_from_json(r, json_array_get(j, i)));
        return s_listv(l);
    }
    case JSON_STRING:
        return s_str(s_strndup(&r->a, json_string_value(j), json_string_length(j)), json_string_length(j));
    case JSON_INTEGER:
        return s_int((int64_t)json_integer_value(j));
    case JSON_REAL:
        return s_float(json_real_value(j));
    case JSON_TRUE:
        return s_bool(true);
    case JSON_FALSE:
        return s_bool(false);
    default:
        return s_none;
    }
}

int tok_jinja_new(const char *src, size_t len, tok_jinja_t **ret, char *err, size_t errlen) {
    if (!src || !ret)
        return -EINVAL;
    tok_jinja_t *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->a.oom = &t->oom;
    if (setjmp(t->oom)) {
        s_arena_free(&t->a);
        free(t);
        return -ENOMEM;
    }
    /* newline normalization; keep_trailing_newline=False drops one trailing newline */
    char *s = s_alloc(&t->a, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else
            s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n')
        n--;
    s[n] = 0;
    lexer L = {.a = &t->a, .src = s, .n = n, .line_no = 1, .err = err, .errlen = errlen};
    int rc = s_lex(&L);
    if (rc < 0) {
        s_arena_free(&t->a);
        free(t);
        return rc;
    }
    parser P = {.a = &t->a, .v = L.v, .n = L.nv, .err = err, .errlen = errlen};
    node *root = s_node(&P, S_BODY, 1);
    root->l1 = s_subparse(&P, NULL);
    if (P.failed) {
        s_arena_free(&t->a);
        free(t);
        return -EINVAL;
    }
    t->root = root;
    t->a.oom = NULL;
    *ret = t;
    return 0;
}

tok_jinja_t *tok_jinja_free(tok_jinja_t *t) {
    if (t) {
        s_arena_free(&t->a);
        free(t);
    }
    return NULL;
}

static const char *const s_builtins[] = {"range", "namespace", "dict", "raise_exception", "strftime_now", NULL};

int tok_jinja_render(const tok_jinja_t *t, const json_t *vars, char **ret, size_t *ret_len, char *err, size_t errlen) {
    if (!t || !ret || (vars && !json_is_object(vars)))
        return -EINVAL;
    rctx *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->a.oom = &r->oom;
    r->err = err;
    r->errlen = errlen;
    if (setjmp(r->oom)) {
        s_arena_free(&r->a);
        free(r);
        return -ENOMEM;
    }
    frame *globals = s_frame_new(r, NULL);
    for (size_t i = 0; s_builtins[i]; i++)
        s_frame_set(r, globals, s_builtins[i], s_fnv(r, FN_BUILTIN, s_builtins[i], s_none));
    if (vars) {
        jv d = s_from_json(r, vars);
        for (size_t i = 0; i < d.d->n; i++)
            s_dict_set(&r->a, &globals->vars, d.d->k[i], d.d->v[i]);
    }
    frame *root = s_frame_new(r, globals);
    sbuf out;
    s_sb_init(&out, &r->a);
    r->out = &out;
    int rc = s_exec(r, &t->root->l1, root);
    if (rc < 0) {
        s_arena_free(&r->a);
        free(r);
        return rc;
    }
    char *text = malloc(out.n + 1);
    if (!text) {
        s_arena_free(&r->a);
        free(r);
        return -ENOMEM;
    }
    if (out.n)
        memcpy(text, out.p, out.n);
    text[out.n] = 0;
    if (ret_len)
        *ret_len = out.n;
    *ret = text;
    s_arena_free(&r->a);
    free(r);
    return 0;
}

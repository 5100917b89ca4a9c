/* om_vocab.c: loads a byte-level BPE vocabulary from a Hugging Face checkpoint directory (tokenizer.json,
 * or vocab.json + merges.txt + tokenizer_config.json) and decodes ids to text exactly as tokenizers'
 * ByteLevel decoder + String::from_utf8_lossy do. See om_vocab.h; the encoder-side accessors at the end
 * are declared in tokenizer_svc/tok_bpe.h. */
#include "om_vocab.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The Qwen2 pre-tokenizer regex, implied by the vocab.json + merges.txt layout (Qwen2Tokenizer). */
static const char OM_VOCAB_QWEN2_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* GPT-2's regex: ByteLevel with use_regex = true. */
static const char OM_VOCAB_GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define OM_VOCAB_NONE UINT32_MAX

/* The merge table packs each merge in one 64-bit slot, 8 to a cache line: bits 0-19 the left id a,
 * 20-39 the right id b, 40-63 the rank. Ids must stay below OM_VOCAB_MAX_MERGE_ID, ranks below 2^24. */
#define OM_VOCAB_MAX_MERGE_ID ((1 << 20) - 1)
#define OM_VOCAB_MAX_RANK (1 << 24)
#define OM_VOCAB_KEY_MASK ((1ull << 40) - 1)
#define OM_VOCAB_EMPTY UINT64_MAX

struct om_vocab {
    size_t n_ids;        /* 1 + largest id */
    size_t ids_cap;      /* entries allocated in the per-id arrays */
    /* Token strings as written in the vocabulary (byte-level characters; added tokens: content). */
    char *str;           /* [str_len] all strings, each NUL-terminated */
    size_t str_len, str_cap; /* bytes */
    uint32_t *str_off;   /* [n_ids] offset into str, OM_VOCAB_NONE when the id has no token */
    uint32_t *str_n;     /* [n_ids] bytes of the string */
    /* Decoded bytes of each token (byte-level mapping undone; added tokens: content). */
    uint8_t *bytes;      /* [bytes_len] */
    size_t bytes_len;
    uint32_t *bytes_off; /* [n_ids] */
    uint32_t *bytes_n;   /* [n_ids] */
    uint8_t *special;    /* [n_ids] 1 for an added token with special = true */
    /* string -> id hash: open addressing, slot holds id + 1 (0 = empty). */
    uint32_t *hslot;     /* [hmask + 1] */
    size_t hmask;
    size_t h_used;       /* filled slots */
    uint64_t *merges;         /* [mmask + 1] packed slots, OM_VOCAB_EMPTY when free */
    size_t mmask;
    unsigned mshift;          /* 64 - log2(mmask + 1), for Fibonacci hashing */
    int32_t *merged_of;       /* [merge_cap] id of the token a+b, by rank */
    size_t merge_cap;
    size_t n_merges;
    om_added_token_t *added;  /* [n_added], content points into str */
    size_t n_added;
    int32_t byte_ids[256];    /* id of each single-byte token, -1 if none */
    int32_t *byte_pair_rank;  /* [65536] rank of merge (byte_ids[x], byte_ids[y]) at x << 8 | y, -1 none */
    char *regex;              /* pre-tokenizer regex (malloc'd), NULL if none */
    bool prefix_space;        /* ByteLevel add_prefix_space */
    int normalizer;           /* 0 none, 1 NFC (tok_bpe.h) */
};

/* ---- byte-level alphabet (GPT-2 bytes_to_unicode) ---- */

static void om_vocab_byte_alphabet(uint32_t b2u[256], int16_t u2b[512])
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        b2u[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        u2b[b2u[b]] = (int16_t)b;
    }
}

/* ---- helpers ---- */

static void om_vocab_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t om_vocab_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h;
}

static size_t om_vocab_pow2(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* Reserves ids [0, n) in the per-id arrays. */
static int om_vocab_grow_ids(om_vocab_t *v, size_t n)
{
    if (n <= v->n_ids)
        return 0;
    if (n <= v->ids_cap) {
        v->n_ids = n;
        return 0;
    }
    size_t cap = n;
    if (cap < v->ids_cap * 2)
        cap = v->ids_cap * 2;
    uint32_t *off = realloc(v->str_off, cap * sizeof(*off));
    if (!off)
        return -ENOMEM;
    v->str_off = off;
    uint32_t *sn = realloc(v->str_n, cap * sizeof(*sn));
    if (!sn)
        return -ENOMEM;
    v->str_n = sn;
    uint8_t *sp = realloc(v->special, cap);
    if (!sp)
        return -ENOMEM;
    v->special = sp;
    for (size_t i = v->ids_cap; i < cap; i++) {
        v->str_off[i] = OM_VOCAB_NONE;
        v->str_n[i] = 0;
        v->special[i] = 0;
    }
    v->ids_cap = cap;
    v->n_ids = n;
    return 0;
}

static int om_vocab_add_str(om_vocab_t *v, const char *s, size_t n, uint32_t *ret_off)
{
    if (v->str_len + n + 1 > v->str_cap) {
        size_t cap = v->str_cap ? v->str_cap : 1 << 20;
        while (cap < v->str_len + n + 1)
            cap *= 2;
        if (cap > UINT32_MAX)
            return -E2BIG;
        char *p = realloc(v->str, cap);
        if (!p)
            return -ENOMEM;
        v->str = p;
        v->str_cap = cap;
    }
    memcpy(v->str + v->str_len, s, n);
    v->str[v->str_len + n] = 0;
    *ret_off = (uint32_t)v->str_len;
    v->str_len += n + 1;
    return 0;
}

static int om_vocab_hash_init(om_vocab_t *v, size_t n_expected)
{
    size_t cap = om_vocab_pow2(n_expected * 2 + 64);
    v->hslot = calloc(cap, sizeof(*v->hslot));
    if (!v->hslot)
        return -ENOMEM;
    v->hmask = cap - 1;
    return 0;
}

/* Slot index where s lives or should go. */
static size_t om_vocab_hash_find(const om_vocab_t *v, const char *s, size_t n)
{
    size_t i = om_vocab_hash(s, n) & v->hmask;
    for (;;) {
        uint32_t e = v->hslot[i];
        if (!e)
            return i;
        uint32_t id = e - 1;
        if (v->str_n[id] == n && !memcmp(v->str + v->str_off[id], s, n))
            return i;
        i = (i + 1) & v->hmask;
    }
}

static int om_vocab_hash_rehash(om_vocab_t *v)
{
    size_t cap = (v->hmask + 1) * 2;
    uint32_t *old = v->hslot;
    size_t oldcap = v->hmask + 1;
    v->hslot = calloc(cap, sizeof(*v->hslot));
    if (!v->hslot) {
        v->hslot = old;
        return -ENOMEM;
    }
    v->hmask = cap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i])
            continue;
        uint32_t id = old[i] - 1;
        v->hslot[om_vocab_hash_find(v, v->str + v->str_off[id], v->str_n[id])] = old[i];
    }
    free(old);
    return 0;
}

/* Sets token id to string s. Later definitions of the same string (added tokens) win the lookup. */
static int om_vocab_set_token(om_vocab_t *v, int64_t id, const char *s, size_t n)
{
    if (id < 0 || id >= INT32_MAX)
        return -ERANGE;
    int rc = om_vocab_grow_ids(v, (size_t)id + 1);
    if (rc)
        return rc;
    uint32_t off;
    if ((rc = om_vocab_add_str(v, s, n, &off)))
        return rc;
    v->str_off[id] = off;
    v->str_n[id] = (uint32_t)n;
    if ((v->h_used + 1) * 2 > v->hmask + 1 && (rc = om_vocab_hash_rehash(v)))
        return rc;
    size_t slot = om_vocab_hash_find(v, s, n);
    v->h_used += !v->hslot[slot];
    v->hslot[slot] = (uint32_t)id + 1;
    return 0;
}

static int32_t om_vocab_lookup(const om_vocab_t *v, const char *s, size_t n)
{
    uint32_t e = v->hslot[om_vocab_hash_find(v, s, n)];
    return e ? (int32_t)(e - 1) : -1;
}

static int om_vocab_merge_init(om_vocab_t *v, size_t n_expected)
{
    size_t cap = om_vocab_pow2(n_expected + n_expected / 2 + 64); /* load <= 2/3 */
    v->merges = malloc(cap * sizeof(*v->merges));
    v->merged_of = malloc((n_expected + 1) * sizeof(*v->merged_of));
    if (!v->merges || !v->merged_of)
        return -ENOMEM;
    memset(v->merges, 0xFF, cap * sizeof(*v->merges));
    v->mmask = cap - 1;
    v->mshift = 64;
    while (cap > 1) {
        cap >>= 1;
        v->mshift--;
    }
    v->merge_cap = n_expected + 1;
    return 0;
}

static inline size_t om_vocab_merge_slot(const om_vocab_t *v, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> v->mshift);
}

/* Adds merge (a, b) -> merged at the next rank. A pair listed twice takes its last rank, as tokenizers'
 * HashMap collect does. */
static void om_vocab_merge_add(om_vocab_t *v, int32_t a, int32_t b, int32_t merged)
{
    uint64_t key = (uint64_t)a | (uint64_t)b << 20;
    uint64_t rank = v->n_merges++;
    v->merged_of[rank] = merged;
    size_t i = om_vocab_merge_slot(v, key);
    while (v->merges[i] != OM_VOCAB_EMPTY && (v->merges[i] & OM_VOCAB_KEY_MASK) != key)
        i = (i + 1) & v->mmask;
    v->merges[i] = key | rank << 40;
}

/* One merge given as its two token strings. */
static int om_vocab_merge_strs(om_vocab_t *v, const char *a, size_t an, const char *b, size_t bn,
                               const char *where, char *err, size_t errlen)
{
    if (v->n_merges + 1 >= v->merge_cap || v->n_merges + 1 >= OM_VOCAB_MAX_RANK) {
        om_vocab_seterr(err, errlen, "%s: more merges than expected", where);
        return -EINVAL;
    }
    int32_t ia = om_vocab_lookup(v, a, an), ib = om_vocab_lookup(v, b, bn);
    if (ia < 0 || ib < 0) {
        om_vocab_seterr(err, errlen, "%s: merges[%zu]: token '%.*s' is not in the vocabulary", where,
                        v->n_merges, (int)(ia < 0 ? an : bn), ia < 0 ? a : b);
        return -EINVAL;
    }
    char stackbuf[512];
    char *cat = an + bn <= sizeof(stackbuf) ? stackbuf : malloc(an + bn);
    if (!cat)
        return -ENOMEM;
    memcpy(cat, a, an);
    memcpy(cat + an, b, bn);
    int32_t im = om_vocab_lookup(v, cat, an + bn);
    if (cat != stackbuf)
        free(cat);
    if (im < 0) {
        om_vocab_seterr(err, errlen, "%s: merges[%zu]: the merged token '%.*s%.*s' is not in the vocabulary", where,
                        v->n_merges, (int)an, a, (int)bn, b);
        return -EINVAL;
    }
    if (ia >= OM_VOCAB_MAX_MERGE_ID || ib >= OM_VOCAB_MAX_MERGE_ID || im >= OM_VOCAB_MAX_MERGE_ID) {
        om_vocab_seterr(err, errlen, "%s: merges[%zu]: token ids above 2^20 - 2 are not supported", where,
                        v->n_merges);
        return -EOPNOTSUPP;
    }
    om_vocab_merge_add(v, ia, ib, im);
    return 0;
}

/* ---- file reading ---- */

static int om_vocab_read_file(const char *path, char **ret, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    if (fseek(f, 0, SEEK_END)) {
        int e = -errno;
        fclose(f);
        return e;
    }
    long sz = ftell(f);
    rewind(f);
    if (sz < 0) {
        fclose(f);
        return -EIO;
    }
    char *buf = malloc((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        fclose(f);
        return -EIO;
    }
    fclose(f);
    buf[sz] = 0;
    *ret = buf;
    *ret_len = (size_t)sz;
    return 0;
}

static int om_vocab_load_json(const char *path, json_t **ret, char *err, size_t errlen)
{
    char *buf;
    size_t n;
    int rc = om_vocab_read_file(path, &buf, &n);
    if (rc) {
        om_vocab_seterr(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    json_error_t je;
    json_t *j = json_loadb(buf, n, JSON_ALLOW_NUL, &je);
    free(buf);
    if (!j) {
        om_vocab_seterr(err, errlen, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
        return -EINVAL;
    }
    *ret = j;
    return 0;
}

static bool om_vocab_jbool(json_t *o, const char *key, bool dflt)
{
    json_t *x = json_object_get(o, key);
    return json_is_boolean(x) ? json_is_true(x) : dflt;
}

/* ---- vocab / added tokens ---- */

static int om_vocab_add_vocab(om_vocab_t *v, json_t *vocab, const char *where, char *err, size_t errlen)
{
    if (!json_is_object(vocab)) {
        om_vocab_seterr(err, errlen, "%s: vocab: expected an object of token -> id", where);
        return -EINVAL;
    }
    size_t n = json_object_size(vocab);
    int rc = om_vocab_hash_init(v, n + 1024);
    if (rc)
        return rc;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 30)) {
            om_vocab_seterr(err, errlen, "%s: vocab['%s']: id must be an integer in [0, 2^30)", where, key);
            return -EINVAL;
        }
        if ((rc = om_vocab_set_token(v, json_integer_value(val), key, strlen(key))))
            return rc;
    }
    return 0;
}

static int om_vocab_add_added(om_vocab_t *v, int64_t id, json_t *tok, const char *where, char *err,
                              size_t errlen)
{
    json_t *content = json_object_get(tok, "content");
    if (!json_is_string(content)) {
        om_vocab_seterr(err, errlen, "%s: added token %lld: 'content' must be a string", where, (long long)id);
        return -EINVAL;
    }
    if (id < 0 || id >= (1 << 30)) {
        om_vocab_seterr(err, errlen, "%s: added token '%s': id must be an integer in [0, 2^30)", where,
                        json_string_value(content));
        return -EINVAL;
    }
    size_t len = json_string_length(content);
    if (!len) {
        om_vocab_seterr(err, errlen, "%s: added token %lld: empty 'content'", where, (long long)id);
        return -EINVAL;
    }
    int rc = om_vocab_set_token(v, id, json_string_value(content), len);
    if (rc)
        return rc;
    om_added_token_t *a = realloc(v->added, (v->n_added + 1) * sizeof(*a));
    if (!a)
        return -ENOMEM;
    v->added = a;
    bool special = om_vocab_jbool(tok, "special", false);
    a[v->n_added++] = (om_added_token_t){
        .id = (int32_t)id,
        .content = NULL, /* fixed up after loading: str may still move */
        .len = len,
        .special = special,
        .normalized = om_vocab_jbool(tok, "normalized", !special),
        .lstrip = om_vocab_jbool(tok, "lstrip", false),
        .rstrip = om_vocab_jbool(tok, "rstrip", false),
        .single_word = om_vocab_jbool(tok, "single_word", false),
    };
    v->special[id] = special;
    return 0;
}

/* ---- tokenizer.json ---- */

static int om_vocab_parse_pretok(om_vocab_t *v, json_t *pt, const char *where, bool *ret_bytelevel,
                                 char *err, size_t errlen)
{
    if (json_is_null(pt) || !pt)
        return 0;
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type) {
        om_vocab_seterr(err, errlen, "%s: pre_tokenizer: missing 'type'", where);
        return -EINVAL;
    }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(pt, "pretokenizers");
        if (!json_is_array(arr)) {
            om_vocab_seterr(err, errlen, "%s: pre_tokenizer.pretokenizers: expected an array", where);
            return -EINVAL;
        }
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) {
            int rc = om_vocab_parse_pretok(v, x, where, ret_bytelevel, err, errlen);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const char *re = json_string_value(json_object_get(json_object_get(pt, "pattern"), "Regex"));
        const char *beh = json_string_value(json_object_get(pt, "behavior"));
        if (!re || !beh || strcmp(beh, "Isolated") || om_vocab_jbool(pt, "invert", false) || v->regex ||
            *ret_bytelevel) {
            om_vocab_seterr(err, errlen,
                            "%s: pre_tokenizer Split: only one Regex pattern with behavior 'Isolated', "
                            "invert false, before ByteLevel is supported",
                            where);
            return -EOPNOTSUPP;
        }
        if (!(v->regex = strdup(re)))
            return -ENOMEM;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        if (*ret_bytelevel) {
            om_vocab_seterr(err, errlen, "%s: pre_tokenizer: two ByteLevel steps", where);
            return -EOPNOTSUPP;
        }
        *ret_bytelevel = true;
        v->prefix_space = om_vocab_jbool(pt, "add_prefix_space", false);
        if (om_vocab_jbool(pt, "use_regex", true)) {
            if (v->regex) {
                om_vocab_seterr(err, errlen, "%s: pre_tokenizer: Split followed by ByteLevel(use_regex=true)",
                                where);
                return -EOPNOTSUPP;
            }
            if (!(v->regex = strdup(OM_VOCAB_GPT2_REGEX)))
                return -ENOMEM;
        }
        return 0;
    }
    om_vocab_seterr(err, errlen, "%s: pre_tokenizer type '%s' is not supported (byte-level BPE only)", where,
                    type);
    return -EOPNOTSUPP;
}

static int om_vocab_parse_norm(om_vocab_t *v, json_t *n, const char *where, char *err, size_t errlen)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (type && !strcmp(type, "NFC")) {
        v->normalizer = 1;
        return 0;
    }
    if (type && !strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        size_t i;
        json_t *x;
        if (!json_is_array(arr) || json_array_size(arr) > 1)
            goto unsupported;
        json_array_foreach(arr, i, x) {
            int rc = om_vocab_parse_norm(v, x, where, err, errlen);
            if (rc)
                return rc;
        }
        return 0;
    }
unsupported:
    om_vocab_seterr(err, errlen, "%s: normalizer '%s' is not supported (only NFC or none)", where,
                    type ? type : "?");
    return -EOPNOTSUPP;
}

/* ---- a streaming reader for tokenizer.json's two big members ----
 * model.vocab and model.merges (99% of the 11 MB) are parsed straight into the tables; every other
 * member is small and goes through jansson as its own document. Anything this reader does not accept
 * falls back to jansson on the whole file, which then gives the precise error. */

typedef struct om_vocab_sbuf {
    char *p;
    size_t n, cap;
} om_vocab_sbuf_t;

static const char *om_vocab_js_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* p at '"': returns the position after the closing quote, NULL if unterminated. */
static const char *om_vocab_js_skip_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

static const char *om_vocab_js_skip_value(const char *p, const char *e)
{
    if (p >= e)
        return NULL;
    if (*p == '"')
        return om_vocab_js_skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                if (!(p = om_vocab_js_skip_string(p, e)))
                    return NULL;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
        p++;
    return p;
}

static int om_vocab_sbuf_put(om_vocab_sbuf_t *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int om_vocab_js_hex4(const char *p, uint32_t *ret)
{
    uint32_t u = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        u <<= 4;
        if (c >= '0' && c <= '9')
            u |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            u |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            u |= (uint32_t)(c - 'A' + 10);
        else
            return -EINVAL;
    }
    *ret = u;
    return 0;
}

/* Decodes the string at *pp (at '"') into b (reset first); advances *pp past it. */
static int om_vocab_js_string(const char **pp, const char *e, om_vocab_sbuf_t *b)
{
    const char *p = *pp;
    b->n = 0;
    if (p >= e || *p != '"')
        return -EINVAL;
    p++;
    for (;;) {
        const char *q = p;
        while (q < e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
            q++;
        if (q >= e || (unsigned char)*q < 0x20)
            return -EINVAL;
        if (q > p && om_vocab_sbuf_put(b, p, (size_t)(q - p)))
            return -ENOMEM;
        if (*q == '"') {
            *pp = q + 1;
            if (!b->p && om_vocab_sbuf_put(b, "", 0))
                return -ENOMEM;
            return 0;
        }
        /* escape */
        if (q + 1 >= e)
            return -EINVAL;
        char c = q[1], o;
        p = q + 2;
        switch (c) {
        case '"': o = '"'; break;
        case '\\': o = '\\'; break;
        case '/': o = '/'; break;
        case 'b': o = '\b'; break;
        case 'f': o = '\f'; break;
        case 'n': o = '\n'; break;
        case 'r': o = '\r'; break;
        case 't': o = '\t'; break;
        case 'u': {
            uint32_t u, lo;
            if (p + 4 > e || om_vocab_js_hex4(p, &u))
                return -EINVAL;
            p += 4;
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (p + 6 > e || p[0] != '\\' || p[1] != 'u' || om_vocab_js_hex4(p + 2, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return -EINVAL;
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u <= 0xDFFF)
                return -EINVAL;
            char enc[4];
            size_t l;
            if (u < 0x80) {
                enc[0] = (char)u;
                l = 1;
            } else if (u < 0x800) {
                enc[0] = (char)(0xC0 | u >> 6);
                enc[1] = (char)(0x80 | (u & 0x3F));
                l = 2;
            } else if (u < 0x10000) {
                enc[0] = (char)(0xE0 | u >> 12);
                enc[1] = (char)(0x80 | (u >> 6 & 0x3F));
                enc[2] = (char)(0x80 | (u & 0x3F));
                l = 3;
            } else {
                enc[0] = (char)(0xF0 | u >> 18);
                enc[1] = (char)(0x80 | (u >> 12 & 0x3F));
                enc[2] = (char)(0x80 | (u >> 6 & 0x3F));
                enc[3] = (char)(0x80 | (u & 0x3F));
                l = 4;
            }
            if (om_vocab_sbuf_put(b, enc, l))
                return -ENOMEM;
            continue;
        }
        default:
            return -EINVAL;
        }
        if (om_vocab_sbuf_put(b, &o, 1))
            return -ENOMEM;
    }
}

/* Calls fn(ctx, key, value_start, value_end) for each member of the object at *p. */
typedef int (*om_vocab_js_member_fn)(void *ctx, const char *key, size_t klen, const char *vs, const char *ve);

static int om_vocab_js_object(const char *p, const char *e, om_vocab_sbuf_t *kb, om_vocab_js_member_fn fn,
                              void *ctx)
{
    p = om_vocab_js_ws(p, e);
    if (p >= e || *p != '{')
        return -EINVAL;
    p = om_vocab_js_ws(p + 1, e);
    if (p < e && *p == '}')
        return 0;
    for (;;) {
        int rc = om_vocab_js_string(&p, e, kb);
        if (rc)
            return rc;
        p = om_vocab_js_ws(p, e);
        if (p >= e || *p != ':')
            return -EINVAL;
        const char *vs = om_vocab_js_ws(p + 1, e), *ve = om_vocab_js_skip_value(vs, e);
        if (!ve || ve == vs)
            return -EINVAL;
        if ((rc = fn(ctx, kb->p, kb->n, vs, ve)))
            return rc;
        p = om_vocab_js_ws(ve, e);
        if (p < e && *p == ',') {
            p = om_vocab_js_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}')
            return 0;
        return -EINVAL;
    }
}

typedef struct om_vocab_split {
    json_t *root;              /* every member but model.vocab / model.merges */
    json_t *model;             /* borrowed from root */
    const char *vocab, *vocab_end;   /* span of model.vocab, NULL if absent */
    const char *merges, *merges_end; /* span of model.merges */
    om_vocab_sbuf_t kb;
} om_vocab_split_t;

static int om_vocab_split_model(void *ctx, const char *key, size_t klen, const char *vs, const char *ve)
{
    om_vocab_split_t *x = ctx;
    if (klen == 5 && !memcmp(key, "vocab", 5)) {
        x->vocab = vs;
        x->vocab_end = ve;
        return 0;
    }
    if (klen == 6 && !memcmp(key, "merges", 6)) {
        x->merges = vs;
        x->merges_end = ve;
        return 0;
    }
    json_t *j = json_loadb(vs, (size_t)(ve - vs), JSON_DECODE_ANY, NULL);
    if (!j || json_object_setn_new(x->model, key, klen, j))
        return -EINVAL;
    return 0;
}

static int om_vocab_split_root(void *ctx, const char *key, size_t klen, const char *vs, const char *ve)
{
    om_vocab_split_t *x = ctx;
    if (klen == 5 && !memcmp(key, "model", 5) && *vs == '{') {
        om_vocab_sbuf_t outer = x->kb;
        x->kb = (om_vocab_sbuf_t){0};
        int rc = om_vocab_js_object(vs, ve, &x->kb, om_vocab_split_model, x);
        free(x->kb.p);
        x->kb = outer;
        return rc;
    }
    json_t *j = json_loadb(vs, (size_t)(ve - vs), JSON_DECODE_ANY, NULL);
    if (!j || json_object_setn_new(x->root, key, klen, j))
        return -EINVAL;
    return 0;
}

/* Splits tokenizer.json; 0 on success (x->root set), else the caller falls back to jansson. */
static int om_vocab_split_tokjson(const char *buf, size_t n, om_vocab_split_t *x)
{
    memset(x, 0, sizeof(*x));
    x->root = json_object();
    x->model = json_object();
    if (!x->root || !x->model || json_object_set(x->root, "model", x->model)) {
        json_decref(x->root);
        json_decref(x->model);
        return -ENOMEM;
    }
    json_decref(x->model); /* root holds it */
    int rc = om_vocab_js_object(buf, buf + n, &x->kb, om_vocab_split_root, x);
    free(x->kb.p);
    x->kb = (om_vocab_sbuf_t){0};
    if (!rc && om_vocab_js_ws(om_vocab_js_skip_value(om_vocab_js_ws(buf, buf + n), buf + n), buf + n) != buf + n)
        rc = -EINVAL;
    if (rc) {
        json_decref(x->root);
        x->root = NULL;
    }
    return rc;
}

/* model.vocab from its span: "token": id members. */
typedef struct om_vocab_vctx {
    om_vocab_t *v;
    const char *path;
    char *err;
    size_t errlen;
} om_vocab_vctx_t;

static int om_vocab_stream_vocab_member(void *ctx, const char *key, size_t klen, const char *vs, const char *ve)
{
    om_vocab_vctx_t *x = ctx;
    long long id = 0;
    const char *p = vs;
    if (p >= ve || *p < '0' || *p > '9')
        goto bad;
    for (; p < ve && *p >= '0' && *p <= '9'; p++) {
        id = id * 10 + (*p - '0');
        if (id >= (1 << 30))
            goto bad;
    }
    if (p != ve)
        goto bad;
    return om_vocab_set_token(x->v, id, key, klen);
bad:
    om_vocab_seterr(x->err, x->errlen, "%s: model.vocab['%.*s']: id must be an integer in [0, 2^30)", x->path,
                    (int)klen, key);
    return -ERANGE;
}

/* model.merges from its span: "a b" strings or ["a", "b"] pairs. */
static int om_vocab_stream_merges(om_vocab_t *v, const char *p, const char *e, const char *path, char *err,
                                  size_t errlen)
{
    /* count the elements first: the tables are sized once */
    size_t count = 0;
    const char *q = om_vocab_js_ws(p + 1, e);
    while (q < e && *q != ']') {
        const char *ve = om_vocab_js_skip_value(q, e);
        if (!ve)
            return -EINVAL;
        count++;
        q = om_vocab_js_ws(ve, e);
        if (q < e && *q == ',')
            q = om_vocab_js_ws(q + 1, e);
    }
    int rc = om_vocab_merge_init(v, count);
    if (rc)
        return rc;
    om_vocab_sbuf_t a = {0}, b = {0};
    q = om_vocab_js_ws(p + 1, e);
    for (size_t i = 0; q < e && *q != ']'; i++) {
        if (*q == '"') {
            if ((rc = om_vocab_js_string(&q, e, &a)))
                break;
            const char *sp = memchr(a.p, ' ', a.n);
            if (!sp || memchr(sp + 1, ' ', a.n - (size_t)(sp + 1 - a.p))) {
                om_vocab_seterr(err, errlen, "%s: model.merges[%zu]: expected \"a b\"", path, i);
                rc = -EINVAL;
                break;
            }
            rc = om_vocab_merge_strs(v, a.p, (size_t)(sp - a.p), sp + 1, a.n - (size_t)(sp + 1 - a.p), path, err,
                                     errlen);
        } else if (*q == '[') {
            q = om_vocab_js_ws(q + 1, e);
            if ((rc = om_vocab_js_string(&q, e, &a)))
                break;
            q = om_vocab_js_ws(q, e);
            if (q >= e || *q != ',') {
                rc = -EINVAL;
                break;
            }
            q = om_vocab_js_ws(q + 1, e);
            if ((rc = om_vocab_js_string(&q, e, &b)))
                break;
            q = om_vocab_js_ws(q, e);
            if (q >= e || *q != ']') {
                rc = -EINVAL;
                break;
            }
            q++;
            rc = om_vocab_merge_strs(v, a.p, a.n, b.p, b.n, path, err, errlen);
        } else {
            rc = -EINVAL;
        }
        if (rc)
            break;
        q = om_vocab_js_ws(q, e);
        if (q < e && *q == ',')
            q = om_vocab_js_ws(q + 1, e);
    }
    free(a.p);
    free(b.p);
    if (rc == -EINVAL && err && !err[0])
        om_vocab_seterr(err, errlen, "%s: model.merges: expected an array of \"a b\" or [\"a\", \"b\"]", path);
    return rc;
}

static int om_vocab_load_tokjson(om_vocab_t *v, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len;
    int rc = om_vocab_read_file(path, &buf, &len);
    if (rc) {
        om_vocab_seterr(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    om_vocab_split_t x;
    json_t *root = NULL;
    /* OM_VOCAB_JANSSON=1 forces the plain jansson path (tests compare the two). */
    const char *force = getenv("OM_VOCAB_JANSSON");
    if ((force && *force == '1') || om_vocab_split_tokjson(buf, len, &x)) {
        memset(&x, 0, sizeof(x));
        json_error_t je;
        if (!(root = json_loadb(buf, len, JSON_ALLOW_NUL, &je))) {
            om_vocab_seterr(err, errlen, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
            free(buf);
            return -EINVAL;
        }
    } else {
        root = x.root;
    }
    json_t *model = json_object_get(root, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model)) {
        om_vocab_seterr(err, errlen, "%s: model: missing", path);
        rc = -EINVAL;
        goto out;
    }
    if (mtype && strcmp(mtype, "BPE")) {
        om_vocab_seterr(err, errlen, "%s: model.type is '%s': only byte-level BPE tokenizers are supported",
                        path, mtype);
        rc = -EOPNOTSUPP;
        goto out;
    }
    if (om_vocab_jbool(model, "byte_fallback", false) ||
        (json_string_value(json_object_get(model, "continuing_subword_prefix")) &&
         *json_string_value(json_object_get(model, "continuing_subword_prefix"))) ||
        (json_string_value(json_object_get(model, "end_of_word_suffix")) &&
         *json_string_value(json_object_get(model, "end_of_word_suffix"))) ||
        om_vocab_jbool(model, "ignore_merges", false) ||
        (json_object_get(model, "dropout") && !json_is_null(json_object_get(model, "dropout")))) {
        om_vocab_seterr(err, errlen,
                        "%s: model: byte_fallback, continuing_subword_prefix, end_of_word_suffix, "
                        "ignore_merges and dropout are not supported",
                        path);
        rc = -EOPNOTSUPP;
        goto out;
    }
    bool bytelevel = false;
    if ((rc = om_vocab_parse_pretok(v, json_object_get(root, "pre_tokenizer"), path, &bytelevel, err, errlen)))
        goto out;
    const char *dtype = json_string_value(json_object_get(json_object_get(root, "decoder"), "type"));
    if (!bytelevel || !dtype || strcmp(dtype, "ByteLevel")) {
        om_vocab_seterr(err, errlen,
                        "%s: pre_tokenizer/decoder: not a byte-level BPE tokenizer (decoder type '%s'); "
                        "only byte-level BPE is supported",
                        path, dtype ? dtype : "none");
        rc = -EOPNOTSUPP;
        goto out;
    }
    if ((rc = om_vocab_parse_norm(v, json_object_get(root, "normalizer"), path, err, errlen)))
        goto out;
    if (x.vocab) {
        if (*x.vocab != '{') {
            om_vocab_seterr(err, errlen, "%s: model.vocab: expected an object of token -> id", path);
            rc = -EINVAL;
            goto out;
        }
        if ((rc = om_vocab_hash_init(v, (size_t)(x.vocab_end - x.vocab) / 12 + 1024)))
            goto out;
        om_vocab_vctx_t vc = {v, path, err, errlen};
        om_vocab_sbuf_t kb = {0};
        rc = om_vocab_js_object(x.vocab, x.vocab_end, &kb, om_vocab_stream_vocab_member, &vc);
        free(kb.p);
        if (rc) {
            if (rc == -EINVAL)
                om_vocab_seterr(err, errlen, "%s: model.vocab: invalid JSON object", path);
            if (rc == -ERANGE)
                rc = -EINVAL;
            goto out;
        }
    } else if ((rc = om_vocab_add_vocab(v, json_object_get(model, "vocab"), path, err, errlen)))
        goto out;
    if (x.merges) {
        if (*x.merges != '[') {
            om_vocab_seterr(err, errlen, "%s: model.merges: expected an array", path);
            rc = -EINVAL;
            goto out;
        }
        if ((rc = om_vocab_stream_merges(v, x.merges, x.merges_end, path, err, errlen)))
            goto out;
        goto added;
    }
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) {
        om_vocab_seterr(err, errlen, "%s: model.merges: expected an array", path);
        rc = -EINVAL;
        goto out;
    }
    if ((rc = om_vocab_merge_init(v, json_array_size(merges))))
        goto out;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                om_vocab_seterr(err, errlen, "%s: model.merges[%zu]: expected \"a b\"", path, i);
                rc = -EINVAL;
                goto out;
            }
            rc = om_vocab_merge_strs(v, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), path, err, errlen);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
            rc = om_vocab_merge_strs(v, json_string_value(a), json_string_length(a), json_string_value(b),
                                     json_string_length(b), path, err, errlen);
        } else {
            om_vocab_seterr(err, errlen, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", path, i);
            rc = -EINVAL;
        }
        if (rc)
            goto out;
    }
added:;
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added)) {
        if (!json_is_array(added)) {
            om_vocab_seterr(err, errlen, "%s: added_tokens: expected an array", path);
            rc = -EINVAL;
            goto out;
        }
        json_t *t;
        size_t k;
        json_array_foreach(added, k, t) {
            json_t *id = json_object_get(t, "id");
            if (!json_is_integer(id)) {
                om_vocab_seterr(err, errlen, "%s: added_tokens[%zu].id: expected an integer", path, k);
                rc = -EINVAL;
                goto out;
            }
            if ((rc = om_vocab_add_added(v, json_integer_value(id), t, path, err, errlen)))
                goto out;
        }
    }
out:
    json_decref(root);
    free(buf);
    return rc;
}

/* ---- vocab.json + merges.txt + tokenizer_config.json ---- */

static int om_vocab_load_legacy(om_vocab_t *v, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    json_t *vocab = NULL, *cfg = NULL;
    char *mtxt = NULL;
    size_t mlen;
    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    int rc = om_vocab_load_json(path, &vocab, err, errlen);
    if (rc)
        goto out;
    if ((rc = om_vocab_add_vocab(v, vocab, path, err, errlen)))
        goto out;
    snprintf(path, sizeof(path), "%s/merges.txt", dir);
    if ((rc = om_vocab_read_file(path, &mtxt, &mlen))) {
        om_vocab_seterr(err, errlen, "%s: %s", path, strerror(-rc));
        goto out;
    }
    size_t lines = 1;
    for (size_t i = 0; i < mlen; i++)
        lines += mtxt[i] == '\n';
    if ((rc = om_vocab_merge_init(v, lines)))
        goto out;
    size_t lineno = 0;
    for (char *p = mtxt, *end = mtxt + mlen; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        lineno++;
        size_t n = (size_t)(le - p);
        if (n && p[n - 1] == '\r')
            n--;
        if (n && !(lineno == 1 && n >= 8 && !memcmp(p, "#version", 8))) {
            char *sp = memchr(p, ' ', n);
            if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - p))) {
                om_vocab_seterr(err, errlen, "%s:%zu: expected \"a b\"", path, lineno);
                rc = -EINVAL;
                goto out;
            }
            if ((rc = om_vocab_merge_strs(v, p, (size_t)(sp - p), sp + 1, n - (size_t)(sp + 1 - p), path, err,
                                          errlen)))
                goto out;
        }
        p = le + 1;
    }
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    struct stat st;
    if (!stat(path, &st)) {
        if ((rc = om_vocab_load_json(path, &cfg, err, errlen)))
            goto out;
        const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class"));
        if (cls && !strstr(cls, "Qwen2") && !strstr(cls, "GPT2") && !strstr(cls, "Qwen3") &&
            strcmp(cls, "TokenizersBackend")) {
            om_vocab_seterr(err, errlen,
                            "%s: tokenizer_class '%s' is not supported without tokenizer.json "
                            "(byte-level BPE Qwen2/GPT2 only)",
                            path, cls);
            rc = -EOPNOTSUPP;
            goto out;
        }
        json_t *atd = json_object_get(cfg, "added_tokens_decoder");
        if (atd && !json_is_object(atd)) {
            om_vocab_seterr(err, errlen, "%s: added_tokens_decoder: expected an object", path);
            rc = -EINVAL;
            goto out;
        }
        /* Sorted by id, as transformers adds them. */
        size_t n = json_object_size(atd);
        struct kv {
            long long id;
            json_t *tok;
        } *arr = n ? calloc(n, sizeof(*arr)) : NULL;
        if (n && !arr) {
            rc = -ENOMEM;
            goto out;
        }
        size_t k = 0;
        const char *key;
        json_t *val;
        json_object_foreach(atd, key, val) {
            char *endp;
            errno = 0;
            long long id = strtoll(key, &endp, 10);
            if (errno || *endp || endp == key || !json_is_object(val)) {
                om_vocab_seterr(err, errlen, "%s: added_tokens_decoder['%s']: expected an id -> token object",
                                path, key);
                free(arr);
                rc = -EINVAL;
                goto out;
            }
            arr[k].id = id;
            arr[k++].tok = val;
        }
        for (size_t i = 1; i < k; i++)
            for (size_t j = i; j > 0 && arr[j - 1].id > arr[j].id; j--) {
                struct kv t = arr[j];
                arr[j] = arr[j - 1];
                arr[j - 1] = t;
            }
        for (size_t i = 0; i < k && !rc; i++)
            rc = om_vocab_add_added(v, arr[i].id, arr[i].tok, path, err, errlen);
        free(arr);
        if (rc)
            goto out;
    }
    if (!(v->regex = strdup(OM_VOCAB_QWEN2_REGEX))) {
        rc = -ENOMEM;
        goto out;
    }
    v->normalizer = 1;
out:
    json_decref(vocab);
    json_decref(cfg);
    free(mtxt);
    return rc;
}

/* ---- finishing: decoded bytes per token ---- */

/* Decodes one UTF-8 code point; returns its length or 0 when invalid. */
static size_t om_vocab_utf8_cp(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (!n)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (!len || len > n)
        return 0;
    uint32_t u = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        u = u << 6 | (s[i] & 0x3F);
    }
    *cp = u;
    return len;
}

static int om_vocab_finish(om_vocab_t *v, char *err, size_t errlen)
{
    uint32_t b2u[256];
    int16_t u2b[512];
    om_vocab_byte_alphabet(b2u, u2b);
    v->bytes_off = malloc(v->n_ids * sizeof(uint32_t));
    v->bytes_n = malloc(v->n_ids * sizeof(uint32_t));
    v->bytes = malloc(v->str_len + 1);
    if (!v->bytes_off || !v->bytes_n || !v->bytes)
        return -ENOMEM;
    uint8_t *is_added = calloc(v->n_ids, 1);
    if (!is_added)
        return -ENOMEM;
    for (size_t i = 0; i < v->n_added; i++)
        is_added[v->added[i].id] = 1;
    size_t out = 0;
    for (size_t id = 0; id < v->n_ids; id++) {
        v->bytes_off[id] = (uint32_t)out;
        v->bytes_n[id] = 0;
        if (v->str_off[id] == OM_VOCAB_NONE)
            continue;
        const uint8_t *s = (const uint8_t *)v->str + v->str_off[id];
        size_t n = v->str_n[id];
        /* ByteLevel decoder: every char must map back to a byte, else the token's raw UTF-8 is used. */
        size_t o = out;
        bool mapped = !is_added[id];
        for (size_t i = 0; i < n && mapped;) {
            uint32_t cp;
            size_t l = om_vocab_utf8_cp(s + i, n - i, &cp);
            if (!l || cp >= 512 || u2b[cp] < 0) {
                mapped = false;
                break;
            }
            v->bytes[o++] = (uint8_t)u2b[cp];
            i += l;
        }
        if (!mapped) {
            memcpy(v->bytes + out, s, n);
            o = out + n;
        }
        v->bytes_n[id] = (uint32_t)(o - out);
        out = o;
    }
    free(is_added);
    for (size_t i = 0; i < v->n_added; i++)
        v->added[i].content = v->str + v->str_off[v->added[i].id];
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t l;
        uint32_t cp = b2u[b];
        if (cp < 0x80) {
            u[0] = (char)cp;
            l = 1;
        } else {
            u[0] = (char)(0xC0 | cp >> 6);
            u[1] = (char)(0x80 | (cp & 0x3F));
            l = 2;
        }
        v->byte_ids[b] = om_vocab_lookup(v, u, l);
    }
    v->byte_pair_rank = malloc(65536 * sizeof(int32_t));
    if (!v->byte_pair_rank)
        return -ENOMEM;
    for (int x = 0; x < 65536; x++)
        v->byte_pair_rank[x] = v->byte_ids[x >> 8] < 0 || v->byte_ids[x & 255] < 0
                                   ? -1
                                   : om_vocab_merge_rank(v, v->byte_ids[x >> 8], v->byte_ids[x & 255], NULL);
    (void)err;
    (void)errlen;
    return 0;
}

int om_vocab_load(const char *model_dir, om_vocab_t **ret, char *err, size_t errlen)
{
    if (!model_dir || !ret) {
        om_vocab_seterr(err, errlen, "om_vocab_load: model_dir and ret are required");
        return -EINVAL;
    }
    om_vocab_t *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    char path[4096];
    struct stat st;
    int rc;
    snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
    if (!stat(path, &st)) {
        rc = om_vocab_load_tokjson(v, path, err, errlen);
    } else {
        char p2[4096];
        snprintf(p2, sizeof(p2), "%s/vocab.json", model_dir);
        if (stat(p2, &st)) {
            om_vocab_seterr(err, errlen, "%s: no tokenizer.json and no vocab.json + merges.txt", model_dir);
            rc = -ENOENT;
        } else {
            rc = om_vocab_load_legacy(v, model_dir, err, errlen);
        }
    }
    if (!rc && !v->n_ids) {
        om_vocab_seterr(err, errlen, "%s: empty vocabulary", model_dir);
        rc = -EINVAL;
    }
    if (!rc)
        rc = om_vocab_finish(v, err, errlen);
    if (rc) {
        if (rc == -ENOMEM)
            om_vocab_seterr(err, errlen, "%s: out of memory", model_dir);
        om_vocab_free(v);
        return rc;
    }
    *ret = v;
    return 0;
}

om_vocab_t *om_vocab_free(om_vocab_t *v)
{
    if (!v)
        return NULL;
    free(v->str);
    free(v->str_off);
    free(v->str_n);
    free(v->bytes);
    free(v->bytes_off);
    free(v->bytes_n);
    free(v->special);
    free(v->hslot);
    free(v->merges);
    free(v->merged_of);
    free(v->byte_pair_rank);
    free(v->added);
    free(v->regex);
    free(v);
    return NULL;
}

size_t om_vocab_size(const om_vocab_t *v)
{
    return v->n_ids;
}

const uint8_t *om_vocab_token_bytes(const om_vocab_t *v, int32_t id, size_t *ret_len)
{
    if (id < 0 || (size_t)id >= v->n_ids || v->str_off[id] == OM_VOCAB_NONE)
        return NULL;
    if (ret_len)
        *ret_len = v->bytes_n[id];
    return v->bytes + v->bytes_off[id];
}

bool om_vocab_is_special(const om_vocab_t *v, int32_t id)
{
    return id >= 0 && (size_t)id < v->n_ids && v->special[id];
}

int32_t om_vocab_token_id(const om_vocab_t *v, const char *token_str, size_t len)
{
    if (!token_str)
        return -1;
    return om_vocab_lookup(v, token_str, len);
}

int32_t om_vocab_merge_rank(const om_vocab_t *v, int32_t a, int32_t b, int32_t *ret_merged)
{
    if ((uint32_t)a >= OM_VOCAB_MAX_MERGE_ID || (uint32_t)b >= OM_VOCAB_MAX_MERGE_ID || !v->merges)
        return -1;
    uint64_t key = (uint64_t)a | (uint64_t)b << 20;
    for (size_t i = om_vocab_merge_slot(v, key);; i = (i + 1) & v->mmask) {
        uint64_t e = v->merges[i];
        if ((e & OM_VOCAB_KEY_MASK) == key) {
            int32_t rank = (int32_t)(e >> 40);
            if (ret_merged)
                *ret_merged = v->merged_of[rank];
            return rank;
        }
        if (e == OM_VOCAB_EMPTY)
            return -1;
    }
}

size_t om_vocab_n_added(const om_vocab_t *v)
{
    return v->n_added;
}

const om_added_token_t *om_vocab_added(const om_vocab_t *v, size_t i)
{
    return i < v->n_added ? &v->added[i] : NULL;
}

/* Length of the maximal invalid subsequence at s (Rust's Utf8Chunks / Unicode "maximal subpart"
 * rule), or 0 if a valid code point starts at s. *ret_valid gets the valid code point's length. */
static size_t om_vocab_utf8_check(const uint8_t *s, size_t n, size_t *ret_valid)
{
    uint8_t c = s[0];
    *ret_valid = 0;
    if (c < 0x80) {
        *ret_valid = 1;
        return 0;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 1;
    size_t i = 1;
    if (i >= n || s[i] < lo || s[i] > hi)
        return 1;
    for (i = 2; i < need; i++)
        if (i >= n || (s[i] & 0xC0) != 0x80)
            return i;
    *ret_valid = need;
    return 0;
}

int om_vocab_decode(const om_vocab_t *v, const int32_t *ids, size_t n, bool skip_special, char **ret,
                    size_t *ret_len)
{
    if (!v || (!ids && n) || !ret)
        return -EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if ((!skip_special || !om_vocab_is_special(v, ids[i])) && om_vocab_token_bytes(v, ids[i], &l))
            total += l;
    }
    uint8_t *raw = malloc(total + 1);
    /* worst case every byte becomes U+FFFD (3 bytes) */
    char *out = malloc(total * 3 + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        return -ENOMEM;
    }
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const uint8_t *b;
        if ((!skip_special || !om_vocab_is_special(v, ids[i])) && (b = om_vocab_token_bytes(v, ids[i], &l))) {
            memcpy(raw + r, b, l);
            r += l;
        }
    }
    size_t o = 0;
    for (size_t i = 0; i < r;) {
        size_t valid;
        size_t bad = om_vocab_utf8_check(raw + i, r - i, &valid);
        if (valid) {
            memcpy(out + o, raw + i, valid);
            o += valid;
            i += valid;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    out[o] = 0;
    free(raw);
    *ret = out;
    if (ret_len)
        *ret_len = o;
    return 0;
}

/* ---- encoder-side accessors (declared in tokenizer_svc/tok_bpe.h) ---- */

const char *om_vocab_pretok_regex(const om_vocab_t *v);
bool om_vocab_pretok_prefix_space(const om_vocab_t *v);
int om_vocab_normalizer(const om_vocab_t *v);
const int32_t *om_vocab_byte_ids(const om_vocab_t *v);
const int32_t *om_vocab_byte_pair_ranks(const om_vocab_t *v);
int32_t om_vocab_merged_of(const om_vocab_t *v, int32_t rank);
const uint64_t *om_vocab_merge_table(const om_vocab_t *v, size_t *ret_mask, unsigned *ret_shift,
                                     const int32_t **ret_merged_of);

const char *om_vocab_pretok_regex(const om_vocab_t *v)
{
    return v->regex;
}

bool om_vocab_pretok_prefix_space(const om_vocab_t *v)
{
    return v->prefix_space;
}

int om_vocab_normalizer(const om_vocab_t *v)
{
    return v->normalizer;
}

const int32_t *om_vocab_byte_ids(const om_vocab_t *v)
{
    return v->byte_ids;
}

const int32_t *om_vocab_byte_pair_ranks(const om_vocab_t *v)
{
    return v->byte_pair_rank;
}

int32_t om_vocab_merged_of(const om_vocab_t *v, int32_t rank)
{
    return rank >= 0 && (size_t)rank < v->n_merges ? v->merged_of[rank] : -1;
}

const uint64_t *om_vocab_merge_table(const om_vocab_t *v, size_t *ret_mask, unsigned *ret_shift,
                                     const int32_t **ret_merged_of)
{
    *ret_mask = v->mmask;
    *ret_shift = v->mshift;
    *ret_merged_of = v->merged_of;
    return v->merges;
}

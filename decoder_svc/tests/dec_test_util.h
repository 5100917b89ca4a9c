/* dec_test_util.h: helpers shared by the decoder_svc unit tests: the tiny-omni vocabulary from the
 * shared fixtures, ids for exact byte strings (every byte has a single-byte token in a byte-level
 * vocab, so any byte sequence can be fed token by token), a strict UTF-8 validator and a seeded
 * xorshift RNG (failures reproduce). Header-only; each test binary includes it once. */
#ifndef DEC_TEST_UTIL_H
#define DEC_TEST_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_vocab.h"

static inline const char *dt_shared_dir(void) {
    const char *d = getenv("OM_SHARED_DIR");
    return d && d[0] ? d : OM_SHARED_DIR;
}

static om_vocab_t *dt_vocab;    /* tiny-omni's tokenizer */
static int32_t dt_byte_id[256]; /* the single-byte token of each byte */

static inline int dt_load_vocab(void) {
    if (dt_vocab)
        return 0;
    char path[4096], err[512] = "";
    snprintf(path, sizeof(path), "%s/fixtures/tiny-omni", dt_shared_dir());
    int r = om_vocab_load(path, &dt_vocab, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "om_vocab_load(%s): %d %s\n", path, r, err);
        return r;
    }
    for (int b = 0; b < 256; b++)
        dt_byte_id[b] = -1;
    size_t n = om_vocab_size(dt_vocab);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const uint8_t *p = om_vocab_token_bytes(dt_vocab, (int32_t)i, &len);
        if (p && len == 1 && dt_byte_id[p[0]] < 0 && !om_vocab_is_special(dt_vocab, (int32_t)i))
            dt_byte_id[p[0]] = (int32_t)i;
    }
    for (int b = 0; b < 256; b++) {
        if (dt_byte_id[b] < 0) {
            fprintf(stderr, "no single-byte token for byte 0x%02x\n", b);
            return -1;
        }
    }
    return 0;
}

/* The id whose token is exactly these bytes, or -1. */
static inline int32_t dt_token(const char *s) {
    size_t n = om_vocab_size(dt_vocab), sl = strlen(s);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const uint8_t *p = om_vocab_token_bytes(dt_vocab, (int32_t)i, &len);
        if (p && len == sl && memcmp(p, s, sl) == 0)
            return (int32_t)i;
    }
    return -1;
}

/* Appends one single-byte token per byte of s to ids; returns the new count. */
static inline size_t dt_bytes(int32_t *ids, size_t n, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        ids[n++] = dt_byte_id[*p];
    return n;
}

/* Strict UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
static inline bool dt_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (i + k >= n) /* bytes i+1 .. i+k must exist */
            return false;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++)
            if (p[i + j] < 0x80 || p[i + j] > 0xBF)
                return false;
        i += k + 1;
    }
    return true;
}

static uint64_t dt_rng = 0x9E3779B97F4A7C15ull;
static inline uint64_t dt_rand(void) {
    dt_rng ^= dt_rng << 13;
    dt_rng ^= dt_rng >> 7;
    dt_rng ^= dt_rng << 17;
    return dt_rng;
}

/* A growable byte string. */
typedef struct dt_str {
    char *p;
    size_t len, cap;
} dt_str_t;

static inline void dt_str_add(dt_str_t *s, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->p = realloc(s->p, s->cap);
        if (!s->p)
            abort();
    }
    if (n)
        memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static inline void dt_str_clear(dt_str_t *s) {
    s->len = 0;
    if (s->p)
        s->p[0] = '\0';
}

#endif

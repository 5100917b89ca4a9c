/* tok_norm.c: NFC for the encoder (see tok_norm.h). A code point is "stable" when NFC can neither
 * change it nor merge it into its predecessor: combining class 0, no canonical decomposition, and not
 * the non-first element of any canonical decomposition (which covers every composition's second
 * character, Hangul jamo aside, which compose algorithmically). Text made only of stable code points
 * is already NFC. Primary composites (é) count as stable: NFC maps them to themselves, and they can only
 * combine with a following second character, which is unstable itself.
 *
 * tokenizers' NFC runs on older Unicode data than utf8proc: the combining marks it does not know yet
 * (tok_unicode_nfc_inert) are plain starters to it. They count as stable here, and the slow path cuts
 * the text at them and normalizes the pieces between, so they neither move nor compose, as in
 * tokenizers. */
#include "tok_norm.h"
#include "tok_unicode.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define TOK_NORM_MAXCP 0x110000

static uint8_t *tok_norm_unstable; /* bitmap [TOK_NORM_MAXCP / 8]: 1 = NFC may touch it */
static pthread_once_t tok_norm_once = PTHREAD_ONCE_INIT;

static void tok_norm_mark(uint8_t *bm, uint32_t cp)
{
    bm[cp >> 3] |= (uint8_t)(1u << (cp & 7));
}

static void tok_norm_build(void)
{
    uint8_t *bm = calloc(TOK_NORM_MAXCP / 8, 1);
    if (!bm)
        return;
    for (uint32_t cp = 0x300; cp < TOK_NORM_MAXCP; cp++) { /* below U+0300 everything is stable */
        const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
        if (p->combining_class)
            tok_norm_mark(bm, cp);
        if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) { /* canonical decomposition */
            /* a primary composite (NFC maps it to itself) is stable, others are not */
            uint8_t one[4];
            utf8proc_ssize_t ol = utf8proc_encode_char((utf8proc_int32_t)cp, one);
            utf8proc_uint8_t *nf = NULL;
            utf8proc_ssize_t nl = utf8proc_map(one, ol, &nf, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (nl != ol || !nf || memcmp(nf, one, (size_t)ol))
                tok_norm_mark(bm, cp);
            free(nf);
            utf8proc_int32_t d[32];
            int last = 0;
            utf8proc_ssize_t k =
                utf8proc_decompose_char((utf8proc_int32_t)cp, d, 32, UTF8PROC_DECOMPOSE, &last);
            for (utf8proc_ssize_t i = 1; i < k && i < 32; i++)
                tok_norm_mark(bm, (uint32_t)d[i]);
        }
    }
    for (uint32_t cp = 0x1100; cp <= 0x11FF; cp++) /* conjoining jamo */
        tok_norm_mark(bm, cp);
    for (uint32_t cp = 0xAC00; cp <= 0xD7A3; cp++) /* Hangul syllables take a trailing jamo */
        bm[cp >> 3] &= (uint8_t)~(1u << (cp & 7));
    for (size_t i = 0; i < sizeof(tok_unicode_nfc_inert) / sizeof(tok_unicode_nfc_inert[0]); i++)
        for (uint32_t cp = tok_unicode_nfc_inert[i][0]; cp <= tok_unicode_nfc_inert[i][1]; cp++)
            bm[cp >> 3] &= (uint8_t)~(1u << (cp & 7));
    tok_norm_unstable = bm;
}

void tok_norm_init(void)
{
    pthread_once(&tok_norm_once, tok_norm_build);
}

bool tok_norm_nfc_stable(const char *s, size_t n)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        uint8_t c = u[i];
        if (c < 0xCC) { /* below U+0300 */
            i += c < 0x80 ? 1 : 2;
            continue;
        }
        pthread_once(&tok_norm_once, tok_norm_build);
        if (!tok_norm_unstable)
            return false;
        uint32_t cp;
        if (c < 0xE0) {
            cp = (uint32_t)(c & 0x1F) << 6 | (u[i + 1] & 0x3F);
            i += 2;
        } else if (c < 0xF0) {
            cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(u[i + 1] & 0x3F) << 6 | (u[i + 2] & 0x3F);
            i += 3;
        } else {
            cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(u[i + 1] & 0x3F) << 12 | (uint32_t)(u[i + 2] & 0x3F) << 6 |
                 (u[i + 3] & 0x3F);
            i += 4;
        }
        if (tok_norm_unstable[cp >> 3] >> (cp & 7) & 1)
            return false;
    }
    return true;
}

static bool tok_norm_is_inert(uint32_t cp)
{
    size_t lo = 0, hi = sizeof(tok_unicode_nfc_inert) / sizeof(tok_unicode_nfc_inert[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tok_unicode_nfc_inert[mid][0])
            hi = mid;
        else if (cp > tok_unicode_nfc_inert[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* Appends utf8proc's NFC of s[0, n) to *buf. */
static int tok_norm_append(const char *s, size_t n, char **buf, size_t *len, size_t *cap)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t m = 0;
    if (n) {
        m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m < 0)
            return m == UTF8PROC_ERROR_NOMEM ? -ENOMEM : -EINVAL;
    }
    if (*len + (size_t)m + 1 > *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        while (c < *len + (size_t)m + 1)
            c *= 2;
        char *p = realloc(*buf, c);
        if (!p) {
            free(dst);
            return -ENOMEM;
        }
        *buf = p;
        *cap = c;
    }
    if (m)
        memcpy(*buf + *len, dst, (size_t)m);
    *len += (size_t)m;
    free(dst);
    return 0;
}

int tok_norm_nfc(const char *s, size_t n, char **ret, size_t *ret_n)
{
    if (tok_norm_nfc_stable(s, n)) {
        *ret = (char *)s;
        *ret_n = n;
        return 0;
    }
    /* normalize between the code points tokenizers treats as inert starters, copy those as they are */
    char *buf = NULL;
    size_t len = 0, cap = 0, from = 0;
    const uint8_t *u = (const uint8_t *)s;
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate(u + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) {
            rc = -EINVAL;
            break;
        }
        if (cp >= 0x300 && tok_norm_is_inert((uint32_t)cp)) {
            rc = tok_norm_append(s + from, i - from, &buf, &len, &cap);
            if (!rc && len + (size_t)l + 1 > cap) {
                size_t c = cap ? cap * 2 : 256;
                while (c < len + (size_t)l + 1)
                    c *= 2;
                char *p = realloc(buf, c);
                if (!p)
                    rc = -ENOMEM;
                else {
                    buf = p;
                    cap = c;
                }
            }
            if (!rc) {
                memcpy(buf + len, s + i, (size_t)l);
                len += (size_t)l;
            }
            from = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (!rc)
        rc = tok_norm_append(s + from, n - from, &buf, &len, &cap);
    if (rc) {
        free(buf);
        return rc;
    }
    if (!buf && !(buf = malloc(1)))
        return -ENOMEM;
    buf[len] = 0;
    *ret = buf;
    *ret_n = len;
    return 0;
}

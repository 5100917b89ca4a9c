/* tok_norm.h: the NFC normalizer of the encoder, with a quick check that skips utf8proc for text NFC
 * cannot change (the common case: ASCII, CJK, Hangul syllables, most scripts without marks).
 * Thread-safe; the quick-check table is built once per process from utf8proc's data. */
#ifndef TOK_NORM_H
#define TOK_NORM_H

#include <stdbool.h>
#include <stddef.h>

/* Builds the quick-check table now rather than on the first non-ASCII text (idempotent). */
void tok_norm_init(void);

/* True when NFC leaves every character of s alone: each is a starter (ccc 0) with no canonical
 * decomposition other than itself, that cannot combine with the character before it. */
bool tok_norm_nfc_stable(const char *s, size_t n);

/* NFC of n bytes of valid UTF-8. On success *ret is s itself (nothing to change) or a malloc'd buffer
 * (*ret != s: caller frees) of *ret_n bytes. Returns 0, -ENOMEM or -EINVAL. */
int tok_norm_nfc(const char *s, size_t n, char **ret, size_t *ret_n);

#endif

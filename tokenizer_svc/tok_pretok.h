/* tok_pretok.h: the Split pre-tokenizer (behavior Isolated): cuts normalized text into the words BPE
 * works on, exactly as Hugging Face tokenizers' Oniguruma regex does.
 *
 * Two engines: PCRE2 (UTF + UCP + JIT) for any pattern, and a hand-written scanner for the Qwen2
 * pattern, used when the checkpoint's pattern is exactly that one. Both take \p{L}, \p{N} and \s from
 * tok_unicode.h (the classes tokenizers' Oniguruma uses, read out of tokenizers itself; PCRE2 gets them
 * as explicit ranges in the pattern). The scanner is fuzzed against PCRE2 (test_tok_codec_fuzz).
 *
 * Ownership: tok_pretok_new() returns a caller-owned object (tok_pretok_free() accepts NULL); it is
 * immutable afterwards and usable from any number of threads. */
#ifndef TOK_PRETOK_H
#define TOK_PRETOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tok_pretok tok_pretok_t;

/* Receives each word [s, s + n) in order; a non-zero return stops the split and is returned. */
typedef int (*tok_pretok_fn)(void *ctx, const char *s, size_t n);

typedef enum tok_pretok_engine {
    TOK_PRETOK_AUTO = 0, /* the scanner when the pattern allows, else PCRE2 */
    TOK_PRETOK_PCRE2 = 1,
    TOK_PRETOK_SCANNER = 2,
} tok_pretok_engine_t;

/* Compiles pattern (Oniguruma syntax); NULL pattern = the whole text is one word. */
int tok_pretok_new(const char *pattern, tok_pretok_t **ret, char *err, size_t errlen);
tok_pretok_t *tok_pretok_free(tok_pretok_t *p);

bool tok_pretok_has_scanner(const tok_pretok_t *p);

/* tokenizers' regex classes of a code point (tok_unicode.h): TOK_PRETOK_L (\p{L}), TOK_PRETOK_N
 * (\p{N}), TOK_PRETOK_WS (\s). Valid once any tok_pretok_new() has returned. */
#define TOK_PRETOK_L 1u
#define TOK_PRETOK_N 2u
#define TOK_PRETOK_WS 4u
unsigned tok_pretok_classes(uint32_t cp);

/* Splits n bytes of valid UTF-8. Gaps between matches are words too (Isolated). Returns 0, the
 * callback's non-zero value, -ENOMEM, or -EINVAL on a regex failure (or SCANNER asked without one). */
int tok_pretok_split(const tok_pretok_t *p, tok_pretok_engine_t engine, const char *s, size_t n,
                     tok_pretok_fn fn, void *ctx);

#endif

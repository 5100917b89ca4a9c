/* tok_codec.h: text -> token ids, exactly as Hugging Face tokenizers encodes with
 * tokenizer(text, add_special_tokens=False) for byte-level BPE checkpoints (Qwen2/Qwen3).
 *
 * Pipeline: added/special-token splitting (honouring lstrip/rstrip/normalized) -> NFC normalizer ->
 * Split pre-tokenizer regex (PCRE2 with Unicode properties) -> ByteLevel mapping -> BPE merges by rank
 * with a priority queue, with a per-thread cache of frequent words.
 *
 * Ownership: tok_codec_load() returns a caller-owned object (tok_codec_free() accepts NULL). After
 * loading it is immutable except for internal, thread-safe caches: any number of threads may call
 * tok_codec_encode() at once. */
#ifndef TOK_CODEC_H
#define TOK_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "om_vocab.h"

typedef struct tok_codec tok_codec_t;

/* Loads tokenizer.json (or vocab.json + merges.txt + tokenizer_config.json) from model_dir.
 * On failure: -errno, and a message naming file and field in err. */
int tok_codec_load(const char *model_dir, tok_codec_t **ret, char *err, size_t errlen);
tok_codec_t *tok_codec_free(tok_codec_t *c);

const om_vocab_t *tok_codec_vocab(const tok_codec_t *c); /* borrowed, valid until tok_codec_free */

/* Encodes len bytes of UTF-8 text. Returns 0 and a malloc'd id array (caller frees) in *ret_ids
 * and its length in *ret_n; -EINVAL when text is not valid UTF-8. */
int tok_codec_encode(const tok_codec_t *c, const char *text, size_t len, int32_t **ret_ids,
                     size_t *ret_n);

#endif

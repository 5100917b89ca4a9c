/* om_vocab.h: a byte-level BPE vocabulary as loaded from a Hugging Face checkpoint directory, shared by
 * tokenizer_svc (encoding) and decoder_svc (detokenization).
 *
 * Loads tokenizer.json (model.vocab, model.merges in both "a b" and ["a","b"] forms, added_tokens with
 * their special/normalized/lstrip/rstrip flags), or the older vocab.json + merges.txt +
 * tokenizer_config.json (added_tokens_decoder) layout when no tokenizer.json exists. Refuses tokenizers
 * that are not byte-level BPE with -EOPNOTSUPP and a message naming the type.
 *
 * Ownership: om_vocab_load() returns a caller-owned object; free with om_vocab_free(), which accepts
 * NULL. Every const pointer returned is borrowed and valid until om_vocab_free(). After loading the
 * object is immutable, so any number of threads may use it at once. */
#ifndef OM_VOCAB_H
#define OM_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct om_vocab om_vocab_t;

typedef struct om_added_token {
    int32_t id;
    const char *content; /* UTF-8, NUL-terminated */
    size_t len;          /* bytes */
    bool special;
    bool normalized;
    bool lstrip;
    bool rstrip;
    bool single_word;
} om_added_token_t;

/* Loads the vocabulary from model_dir. On failure returns -errno and, if err is non-NULL, writes a
 * NUL-terminated message naming the file and field into err (errlen bytes). */
int om_vocab_load(const char *model_dir, om_vocab_t **ret, char *err, size_t errlen);
om_vocab_t *om_vocab_free(om_vocab_t *v);

size_t om_vocab_size(const om_vocab_t *v);          /* 1 + the largest id (model vocab and added tokens) */
/* The raw bytes a token stands for (byte-level decoding applied; added tokens: their content).
 * Returns NULL for an id with no token. */
const uint8_t *om_vocab_token_bytes(const om_vocab_t *v, int32_t id, size_t *ret_len);
bool om_vocab_is_special(const om_vocab_t *v, int32_t id); /* an added token with special=true */
int32_t om_vocab_token_id(const om_vocab_t *v, const char *token_str, size_t len); /* -1 if absent */
/* Merge rank of the pair (a, b) of vocabulary ids, or -1 when the pair is not a merge. */
int32_t om_vocab_merge_rank(const om_vocab_t *v, int32_t a, int32_t b, int32_t *ret_merged);
size_t om_vocab_n_added(const om_vocab_t *v);
const om_added_token_t *om_vocab_added(const om_vocab_t *v, size_t i);

/* Decodes ids exactly as transformers' tokenizer.decode(ids, skip_special_tokens=skip_special):
 * invalid UTF-8 sequences become U+FFFD the way the Rust `String::from_utf8_lossy` does.
 * Returns a malloc'd NUL-terminated string (caller frees) and its length in *ret_len. */
int om_vocab_decode(const om_vocab_t *v, const int32_t *ids, size_t n, bool skip_special, char **ret,
                    size_t *ret_len);

#endif

/* tok_bpe.h: the byte-level BPE merge loop (tok_bpe_*) and the encoder-side accessors of om_vocab
 * that om_vocab.h does not publish (om_vocab_pretok_*, om_vocab_byte_ids, om_vocab_normalizer).
 *
 * The om_vocab_* extensions are defined in common/om_vocab.c next to the rest of the vocabulary; they
 * are declared here because only the encoder needs them. Every pointer returned is borrowed and valid
 * until om_vocab_free(). */
#ifndef TOK_BPE_H
#define TOK_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_vocab.h"

/* The normalizer a checkpoint asks for (om_vocab_normalizer()). */
#define OM_VOCAB_NORM_NONE 0
#define OM_VOCAB_NORM_NFC 1

/* The Split pre-tokenizer's regex (Oniguruma syntax, as written in tokenizer.json; the Qwen2 regex for
 * the vocab.json + merges.txt layout). NULL when the checkpoint has no regex step. */
const char *om_vocab_pretok_regex(const om_vocab_t *v);
/* ByteLevel add_prefix_space. */
bool om_vocab_pretok_prefix_space(const om_vocab_t *v);
int om_vocab_normalizer(const om_vocab_t *v);
/* ids[256]: the id of the one-byte token of each byte value, -1 where the vocabulary has none. */
const int32_t *om_vocab_byte_ids(const om_vocab_t *v);
/* ranks[x << 8 | y]: merge rank of the pair of one-byte tokens (x, y), -1 when none. */
const int32_t *om_vocab_byte_pair_ranks(const om_vocab_t *v);
/* The id of the token a merge of this rank makes; -1 for a rank out of range. */
int32_t om_vocab_merged_of(const om_vocab_t *v, int32_t rank);

/* The merge table itself, for lookups inlined in the merge loop: slots[mask + 1] of packed 64-bit
 * entries (bits 0-19 left id, 20-39 right id, 40-63 rank; all ones = empty), at Fibonacci hash
 * (key * 0x9E3779B97F4A7C15) >> shift with linear probing; merged_of[rank] is the merged token's id.
 * NULL when the vocabulary has no merges. */
const uint64_t *om_vocab_merge_table(const om_vocab_t *v, size_t *ret_mask, unsigned *ret_shift,
                                     const int32_t **ret_merged_of);

/* Scratch space for tok_bpe_word(); one per thread. Grows as needed. */
typedef struct tok_bpe_scratch {
    void *buf;  /* symbols + heap, malloc'd */
    size_t cap; /* bytes in buf */
} tok_bpe_scratch_t;

void tok_bpe_scratch_free(tok_bpe_scratch_t *s);

/* Applies the BPE merges to one pre-tokenized word of len bytes (raw bytes; the byte-level mapping is
 * implicit). Appends the resulting ids to out (which must have room for len ids) and returns their
 * count, or -EINVAL when a byte has no token, -ENOMEM. Merges lowest rank first, leftmost first on
 * ties, exactly as Hugging Face tokenizers' BPE::merge_word. */
int tok_bpe_word(const om_vocab_t *v, const uint8_t *word, size_t len, tok_bpe_scratch_t *s,
                 int32_t *out);

#endif

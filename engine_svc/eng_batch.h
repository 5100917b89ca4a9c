/* eng_batch.h: one engine step's work, as the scheduler (eng_sched) hands it to the model runner
 * (eng_model_forward) of any backend. Plain data, borrowed pointers, no ownership.
 *
 * Paged KV: every layer has a K pool and a V pool of n_blocks_total blocks, each block holding
 * block_size tokens x n_kv_heads x head_dim values. Position p of a sequence lives in slot
 * block_table[p / block_size] * block_size + p % block_size. A step runs, per sequence, n_tokens new
 * tokens at positions n_past .. n_past+n_tokens-1 (a prefill chunk, or one decode token), writes
 * their K/V into their slots, and attends causally over positions 0 .. n_past+n_tokens-1. Blocks
 * shared through the prefix cache appear in several block tables; only blocks past n_past are
 * written. */
#ifndef ENG_BATCH_H
#define ENG_BATCH_H

#include <stdbool.h>
#include <stdint.h>

typedef struct eng_batch_seq {
    const int32_t *tokens;      /* (n_tokens) token ids to run this step */
    uint32_t n_tokens;          /* >= 1 */
    uint32_t n_past;            /* tokens of this sequence already in the KV cache */
    const int32_t *positions;   /* (3, n_tokens) M-RoPE rows T,H,W: positions[r * n_tokens + i];
                                   NULL = text-only, all rows n_past + i */
    const int32_t *block_table; /* (n_blocks) KV block ids covering 0 .. n_past+n_tokens-1 */
    uint32_t n_blocks;
    bool want_logits;           /* produce logits for this chunk's last token */
} eng_batch_seq_t;

typedef struct eng_batch {
    const eng_batch_seq_t *seqs; /* (n_seqs) */
    uint32_t n_seqs;
    uint32_t n_tokens;           /* sum of seqs[i].n_tokens */
    uint32_t n_logits;           /* number of seqs with want_logits; logits rows come in seq order */
} eng_batch_t;

#endif

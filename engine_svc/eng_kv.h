/* eng_kv.h: the paged KV cache's bookkeeping (no tensors): a block allocator with refcounts, one block
 * table per sequence, and a prefix cache that reuses blocks holding an identical token prefix.
 *
 * Blocks: n_blocks ids 0..n_blocks-1, each holding block_size token positions of every layer's K/V
 * (the tensors themselves live in the backend, see eng_batch.h). A block is
 *   - in use: refcount > 0 (referenced from one or more block tables);
 *   - cached: refcount 0 but registered in the prefix cache (its K/V are still valid); it counts as
 *     free and is evicted in least-recently-released order when a fresh block is needed;
 *   - free: refcount 0 and not registered.
 * Prefix cache: a full block of token ids t[i*bs .. (i+1)*bs) at block index i is keyed by
 * hash(key of block i-1, the bs ids), so a key names the whole prefix up to the block's end. Only
 * blocks whose K/V have been computed are registered (eng_kv_commit).
 *
 * Ownership: eng_kv_new() returns a caller-owned allocator, freed with eng_kv_free() (NULL-safe).
 * eng_kv_table_t is caller-storage, zero-initialised, and must be emptied with eng_kv_release()
 * before the allocator is freed; eng_kv_table_fini() frees its arrays. No function mallocs except
 * eng_kv_new() and the table growth in eng_kv_reserve() (amortised, per block, never per token). */
#ifndef ENG_KV_H
#define ENG_KV_H

#include <stdbool.h>
#include <stdint.h>

typedef struct eng_kv eng_kv_t;

typedef struct eng_kv_table {
    int32_t *blocks;     /* (cap) block ids; blocks[i] covers positions i*bs .. (i+1)*bs-1 */
    uint64_t *keys;      /* (cap) prefix key of each full, committed block (valid for i < n_keyed) */
    uint32_t n_blocks;   /* blocks held (each holds one reference) */
    uint32_t n_keyed;    /* leading blocks whose prefix key is known (committed or matched) */
    uint32_t cap;        /* capacity of blocks/keys, in blocks */
} eng_kv_table_t;

typedef struct eng_kv_stats {
    uint32_t n_blocks;       /* total blocks */
    uint32_t n_free;         /* free + cached (allocatable) */
    uint32_t n_cached;       /* refcount 0 but still in the prefix cache */
    uint64_t hit_tokens;     /* prompt tokens served from the cache, all time */
    uint64_t query_tokens;   /* prompt tokens looked up, all time */
} eng_kv_stats_t;

/* n_blocks >= 1, block_size >= 1. prefix_cache false: match finds nothing, commit registers nothing. */
int eng_kv_new(uint32_t n_blocks, uint32_t block_size, bool prefix_cache, eng_kv_t **ret);
eng_kv_t *eng_kv_free(eng_kv_t *kv);

uint32_t eng_kv_block_size(const eng_kv_t *kv);
uint32_t eng_kv_n_free(const eng_kv_t *kv);   /* blocks allocatable now (free + cached) */
void eng_kv_stats(const eng_kv_t *kv, eng_kv_stats_t *ret);
uint32_t eng_kv_refcount(const eng_kv_t *kv, int32_t block); /* for tests; 0 if out of range */

/* Blocks needed to hold n_tokens positions. */
uint32_t eng_kv_blocks_for(const eng_kv_t *kv, uint64_t n_tokens);

/* Looks up the longest cached prefix of tokens[0..n_tokens) made of full blocks, never the whole
 * prompt (at least one token is left to compute, so the model produces logits). The table must be
 * empty. Takes a reference on each matched block and appends it to the table. *ret_cached gets the
 * number of tokens matched (a multiple of block_size). The hit counters are not touched (the caller
 * may still give the blocks back if admission fails): see eng_kv_note. -ENOMEM if the table cannot
 * grow. */
int eng_kv_match(eng_kv_t *kv, eng_kv_table_t *t, const int32_t *tokens, uint32_t n_tokens,
                 uint32_t *ret_cached);

/* Adds one admitted prompt to the prefix cache counters: n_query tokens looked up, n_hit served. */
void eng_kv_note(eng_kv_t *kv, uint32_t n_query, uint32_t n_hit);

/* Grows the table to cover n_tokens positions, taking free blocks first, then evicting cached ones.
 * All or nothing: -ENOSPC (table unchanged) when not enough blocks are allocatable. */
int eng_kv_reserve(eng_kv_t *kv, eng_kv_table_t *t, uint64_t n_tokens);

/* Registers in the prefix cache every full block of tokens[0..n_computed) not yet keyed (their K/V
 * are now written). A block whose key is already cached under another block stays private. */
void eng_kv_commit(eng_kv_t *kv, eng_kv_table_t *t, const int32_t *tokens, uint32_t n_computed);

/* Drops the table's references (finish, abort, deadline, preemption) and empties it; blocks whose
 * refcount reaches 0 become cached (if keyed) or free. The arrays are kept for reuse. */
void eng_kv_release(eng_kv_t *kv, eng_kv_table_t *t);

/* Frees the table's arrays; the table must hold no blocks (call eng_kv_release first). */
void eng_kv_table_fini(eng_kv_table_t *t);

#endif

/* tok_bpe.c: the BPE merge loop for one pre-tokenized word (see tok_bpe.h). Lowest merge rank first,
 * leftmost first on ties, as tokenizers' Word::merge_all: short words by a linear scan for the best
 * pair, longer ones with a binary min-heap of (rank, position) entries and lazy invalidation. */
#include "tok_bpe.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* One symbol of the word being merged: a doubly linked list over the initial byte positions. */
typedef struct tok_bpe_sym {
    int32_t id;   /* token id */
    int32_t prev; /* index of the previous live symbol, -1 at the start */
    int32_t next; /* index of the next live symbol, -1 at the end */
    int32_t rank; /* rank of the pair (this, next), -1 when none (scan mode only) */
} tok_bpe_sym_t;

/* The merge table, read inline (see om_vocab_merge_table). */
typedef struct tok_bpe_mt {
    const uint64_t *slot;
    size_t mask;
    unsigned shift;
    const int32_t *merged_of;
} tok_bpe_mt_t;

#define TOK_BPE_MAX_ID ((1 << 20) - 1)
#define TOK_BPE_KEY_MASK ((1ull << 40) - 1)

/* Rank of the merge (a, b), -1 when none. */
static inline int32_t tok_bpe_rank(const tok_bpe_mt_t *m, int32_t a, int32_t b)
{
    if (!m->slot || (uint32_t)a >= TOK_BPE_MAX_ID || (uint32_t)b >= TOK_BPE_MAX_ID)
        return -1;
    uint64_t key = (uint64_t)a | (uint64_t)b << 20;
    for (size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> m->shift);; i = (i + 1) & m->mask) {
        uint64_t e = m->slot[i];
        if ((e & TOK_BPE_KEY_MASK) == key)
            return (int32_t)(e >> 40);
        if (e == UINT64_MAX)
            return -1;
    }
}

/* Below this many bytes the linear scan beats the heap. */
#define TOK_BPE_SCAN_MAX 24

void tok_bpe_scratch_free(tok_bpe_scratch_t *s)
{
    if (!s)
        return;
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

static int tok_bpe_reserve(tok_bpe_scratch_t *s, size_t bytes)
{
    if (s->cap >= bytes)
        return 0;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < bytes)
        cap *= 2;
    void *p = realloc(s->buf, cap);
    if (!p)
        return -ENOMEM;
    s->buf = p;
    s->cap = cap;
    return 0;
}

static void tok_bpe_heap_push(uint64_t *h, size_t *n, uint64_t x)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p] <= x)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static uint64_t tok_bpe_heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], x = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1] < h[c])
            c++;
        if (h[c] >= x)
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = x;
    return top;
}

int tok_bpe_word(const om_vocab_t *v, const uint8_t *word, size_t len, tok_bpe_scratch_t *s, int32_t *out)
{
    if (!len)
        return 0;
    if (len > INT32_MAX / 2)
        return -E2BIG;
    const int32_t *bid = om_vocab_byte_ids(v);
    if (len == 1) {
        if (bid[word[0]] < 0)
            return -EINVAL;
        out[0] = bid[word[0]];
        return 1;
    }
    int rc = tok_bpe_reserve(s, len * (sizeof(tok_bpe_sym_t) + 2 * sizeof(uint64_t)));
    if (rc)
        return rc;
    tok_bpe_sym_t *sym = s->buf;
    for (size_t i = 0; i < len; i++) {
        int32_t id = bid[word[i]];
        if (id < 0)
            return -EINVAL;
        sym[i].id = id;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < len ? (int32_t)i + 1 : -1;
    }
    const int32_t *bpr = om_vocab_byte_pair_ranks(v);
    tok_bpe_mt_t mt;
    mt.slot = om_vocab_merge_table(v, &mt.mask, &mt.shift, &mt.merged_of);
    if (len <= TOK_BPE_SCAN_MAX) {
        for (size_t i = 0; i + 1 < len; i++)
            sym[i].rank = bpr[word[i] << 8 | word[i + 1]];
        sym[len - 1].rank = -1;
        for (;;) {
            int32_t best = -1, best_rank = INT32_MAX;
            for (int32_t i = 0; i >= 0; i = sym[i].next)
                if (sym[i].rank >= 0 && sym[i].rank < best_rank) {
                    best_rank = sym[i].rank;
                    best = i;
                }
            if (best < 0)
                break;
            int32_t nx = sym[best].next, merged = mt.merged_of[best_rank];
            sym[best].id = merged;
            sym[best].next = sym[nx].next;
            if (sym[nx].next >= 0)
                sym[sym[nx].next].prev = best;
            sym[best].rank = sym[best].next >= 0 ? tok_bpe_rank(&mt, merged, sym[sym[best].next].id) : -1;
            int32_t pv = sym[best].prev;
            if (pv >= 0)
                sym[pv].rank = tok_bpe_rank(&mt, sym[pv].id, merged);
        }
    } else {
        uint64_t *heap = (uint64_t *)(sym + len);
        size_t hn = 0;
        for (size_t i = 0; i + 1 < len; i++) {
            int32_t r = bpr[word[i] << 8 | word[i + 1]];
            if (r >= 0)
                tok_bpe_heap_push(heap, &hn, (uint64_t)r << 32 | i);
        }
        while (hn) {
            uint64_t top = tok_bpe_heap_pop(heap, &hn);
            int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
            if (sym[pos].id < 0 || sym[pos].next < 0)
                continue;
            int32_t nx = sym[pos].next;
            if (tok_bpe_rank(&mt, sym[pos].id, sym[nx].id) != rank)
                continue; /* stale entry */
            int32_t merged = mt.merged_of[rank];
            sym[pos].id = merged;
            sym[nx].id = -1;
            sym[pos].next = sym[nx].next;
            if (sym[nx].next >= 0)
                sym[sym[nx].next].prev = pos;
            int32_t pv = sym[pos].prev;
            if (pv >= 0) {
                int32_t r = tok_bpe_rank(&mt, sym[pv].id, merged);
                if (r >= 0)
                    tok_bpe_heap_push(heap, &hn, (uint64_t)r << 32 | (uint32_t)pv);
            }
            if (sym[pos].next >= 0) {
                int32_t r = tok_bpe_rank(&mt, merged, sym[sym[pos].next].id);
                if (r >= 0)
                    tok_bpe_heap_push(heap, &hn, (uint64_t)r << 32 | (uint32_t)pos);
            }
        }
    }
    int n = 0;
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        out[n++] = sym[i].id;
    return n;
}

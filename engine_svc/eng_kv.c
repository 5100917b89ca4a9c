/* eng_kv.c: paged KV block allocator, per-sequence block tables and the prefix cache. See eng_kv.h. */
#include "eng_kv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define S_NIL (-1)
#define S_ROOT_KEY UINT64_C(0x9e3779b97f4a7c15) /* parent key of block 0 */

struct eng_kv {
    uint32_t n_blocks;       /* total blocks */
    uint32_t block_size;     /* tokens per block */
    bool prefix_cache;       /* registering and matching enabled */
    uint32_t *refcnt;        /* (n_blocks) references from block tables */
    bool *keyed;             /* (n_blocks) registered in the hash table */
    uint64_t *key;           /* (n_blocks) prefix key when keyed */
    uint64_t *parent_key;    /* (n_blocks) key of the previous block (S_ROOT_KEY for block 0) */
    int32_t *tokens;         /* (n_blocks, block_size) ids of a keyed block, to rule out collisions */
    int32_t *hnext;          /* (n_blocks) next block in the same hash bucket */
    int32_t *buckets;        /* (n_buckets) first block of each bucket */
    uint32_t n_buckets;      /* power of two */
    int32_t *free_stack;     /* (n_blocks) free, unkeyed blocks */
    uint32_t n_free_stack;
    int32_t *lru_prev;       /* (n_blocks) cached-block LRU list, head = least recently released */
    int32_t *lru_next;
    int32_t lru_head, lru_tail;
    uint32_t n_cached;       /* blocks on the LRU list */
    uint64_t hit_tokens, query_tokens;
};

static uint64_t s_mix(uint64_t x) {
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

static uint64_t s_block_key(uint64_t parent, const int32_t *toks, uint32_t n) {
    uint64_t h = s_mix(parent ^ UINT64_C(0x51afd7ed558ccd));
    for (uint32_t i = 0; i < n; i++)
        h = s_mix(h ^ (uint64_t)(uint32_t)toks[i]) + i;
    return h;
}

int eng_kv_new(uint32_t n_blocks, uint32_t block_size, bool prefix_cache, eng_kv_t **ret) {
    if (!ret || n_blocks == 0 || block_size == 0 || n_blocks > INT32_MAX / 2)
        return -EINVAL;
    eng_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv)
        return -ENOMEM;
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->prefix_cache = prefix_cache;
    kv->n_buckets = 1;
    while (kv->n_buckets < n_blocks)
        kv->n_buckets <<= 1;
    kv->refcnt = calloc(n_blocks, sizeof *kv->refcnt);
    kv->keyed = calloc(n_blocks, sizeof *kv->keyed);
    kv->key = calloc(n_blocks, sizeof *kv->key);
    kv->parent_key = calloc(n_blocks, sizeof *kv->parent_key);
    kv->tokens = prefix_cache ? calloc((size_t)n_blocks * block_size, sizeof *kv->tokens) : NULL;
    kv->hnext = malloc(n_blocks * sizeof *kv->hnext);
    kv->buckets = malloc(kv->n_buckets * sizeof *kv->buckets);
    kv->free_stack = malloc(n_blocks * sizeof *kv->free_stack);
    kv->lru_prev = malloc(n_blocks * sizeof *kv->lru_prev);
    kv->lru_next = malloc(n_blocks * sizeof *kv->lru_next);
    if (!kv->refcnt || !kv->keyed || !kv->key || !kv->parent_key || (prefix_cache && !kv->tokens) ||
        !kv->hnext || !kv->buckets || !kv->free_stack || !kv->lru_prev || !kv->lru_next) {
        eng_kv_free(kv);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < kv->n_buckets; i++)
        kv->buckets[i] = S_NIL;
    /* pop order 0, 1, 2, ...: the stack top is the end of the array */
    for (uint32_t i = 0; i < n_blocks; i++) {
        kv->free_stack[i] = (int32_t)(n_blocks - 1 - i);
        kv->hnext[i] = kv->lru_prev[i] = kv->lru_next[i] = S_NIL;
    }
    kv->n_free_stack = n_blocks;
    kv->lru_head = kv->lru_tail = S_NIL;
    *ret = kv;
    return 0;
}

eng_kv_t *eng_kv_free(eng_kv_t *kv) {
    if (!kv)
        return NULL;
    free(kv->refcnt);
    free(kv->keyed);
    free(kv->key);
    free(kv->parent_key);
    free(kv->tokens);
    free(kv->hnext);
    free(kv->buckets);
    free(kv->free_stack);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv);
    return NULL;
}

uint32_t eng_kv_block_size(const eng_kv_t *kv) { return kv->block_size; }
uint32_t eng_kv_n_free(const eng_kv_t *kv) { return kv->n_free_stack + kv->n_cached; }

void eng_kv_stats(const eng_kv_t *kv, eng_kv_stats_t *ret) {
    ret->n_blocks = kv->n_blocks;
    ret->n_free = eng_kv_n_free(kv);
    ret->n_cached = kv->n_cached;
    ret->hit_tokens = kv->hit_tokens;
    ret->query_tokens = kv->query_tokens;
}

uint32_t eng_kv_refcount(const eng_kv_t *kv, int32_t block) {
    if (block < 0 || (uint32_t)block >= kv->n_blocks)
        return 0;
    return kv->refcnt[block];
}

uint32_t eng_kv_blocks_for(const eng_kv_t *kv, uint64_t n_tokens) {
    uint64_t n = (n_tokens + kv->block_size - 1) / kv->block_size;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

void eng_kv_note(eng_kv_t *kv, uint32_t n_query, uint32_t n_hit) {
    kv->query_tokens += n_query;
    kv->hit_tokens += n_hit;
}

/* ---- LRU of cached blocks ---- */
static void s_lru_remove(eng_kv_t *kv, int32_t b) {
    int32_t p = kv->lru_prev[b], n = kv->lru_next[b];
    if (p != S_NIL)
        kv->lru_next[p] = n;
    else
        kv->lru_head = n;
    if (n != S_NIL)
        kv->lru_prev[n] = p;
    else
        kv->lru_tail = p;
    kv->lru_prev[b] = kv->lru_next[b] = S_NIL;
    kv->n_cached--;
}

static void s_lru_push(eng_kv_t *kv, int32_t b) {
    kv->lru_prev[b] = kv->lru_tail;
    kv->lru_next[b] = S_NIL;
    if (kv->lru_tail != S_NIL)
        kv->lru_next[kv->lru_tail] = b;
    else
        kv->lru_head = b;
    kv->lru_tail = b;
    kv->n_cached++;
}

/* ---- hash table ---- */
static int32_t s_lookup(const eng_kv_t *kv, uint64_t key, uint64_t parent, const int32_t *toks) {
    for (int32_t b = kv->buckets[key & (kv->n_buckets - 1)]; b != S_NIL; b = kv->hnext[b])
        if (kv->key[b] == key && kv->parent_key[b] == parent &&
            memcmp(kv->tokens + (size_t)b * kv->block_size, toks, kv->block_size * sizeof *toks) == 0)
            return b;
    return S_NIL;
}

static void s_unregister(eng_kv_t *kv, int32_t b) {
    int32_t *pp = &kv->buckets[kv->key[b] & (kv->n_buckets - 1)];
    while (*pp != S_NIL && *pp != b)
        pp = &kv->hnext[*pp];
    if (*pp == b)
        *pp = kv->hnext[b];
    kv->hnext[b] = S_NIL;
    kv->keyed[b] = false;
}

static int s_table_grow(eng_kv_table_t *t, uint32_t need) {
    if (need <= t->cap)
        return 0;
    uint32_t cap = t->cap ? t->cap : 8;
    while (cap < need)
        cap *= 2;
    int32_t *blocks = realloc(t->blocks, cap * sizeof *blocks);
    if (!blocks)
        return -ENOMEM;
    t->blocks = blocks;
    uint64_t *keys = realloc(t->keys, cap * sizeof *keys);
    if (!keys)
        return -ENOMEM;
    t->keys = keys;
    t->cap = cap;
    return 0;
}

int eng_kv_match(eng_kv_t *kv, eng_kv_table_t *t, const int32_t *tokens, uint32_t n_tokens,
                 uint32_t *ret_cached) {
    if (t->n_blocks != 0)
        return -EINVAL;
    uint32_t bs = kv->block_size, n = 0;
    if (kv->prefix_cache && n_tokens > 0) {
        uint32_t max_blocks = (n_tokens - 1) / bs; /* leave >= 1 token to compute */
        int r = s_table_grow(t, max_blocks);
        if (r < 0)
            return r;
        uint64_t parent = S_ROOT_KEY;
        for (; n < max_blocks; n++) {
            const int32_t *toks = tokens + (size_t)n * bs;
            uint64_t key = s_block_key(parent, toks, bs);
            int32_t b = s_lookup(kv, key, parent, toks);
            if (b == S_NIL)
                break;
            if (kv->refcnt[b]++ == 0)
                s_lru_remove(kv, b);
            t->blocks[n] = b;
            t->keys[n] = key;
            parent = key;
        }
    }
    t->n_blocks = t->n_keyed = n;
    *ret_cached = n * bs;
    return 0;
}

int eng_kv_reserve(eng_kv_t *kv, eng_kv_table_t *t, uint64_t n_tokens) {
    uint32_t need = eng_kv_blocks_for(kv, n_tokens);
    if (need <= t->n_blocks)
        return 0;
    uint32_t add = need - t->n_blocks;
    if (add > eng_kv_n_free(kv))
        return -ENOSPC;
    int r = s_table_grow(t, need);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < add; i++) {
        int32_t b;
        if (kv->n_free_stack > 0) {
            b = kv->free_stack[--kv->n_free_stack];
        } else { /* evict the least recently released cached block */
            b = kv->lru_head;
            s_lru_remove(kv, b);
            s_unregister(kv, b);
        }
        kv->refcnt[b] = 1;
        t->blocks[t->n_blocks++] = b;
    }
    return 0;
}

void eng_kv_commit(eng_kv_t *kv, eng_kv_table_t *t, const int32_t *tokens, uint32_t n_computed) {
    if (!kv->prefix_cache)
        return;
    uint32_t bs = kv->block_size;
    uint32_t full = n_computed / bs;
    if (full > t->n_blocks)
        full = t->n_blocks;
    for (uint32_t i = t->n_keyed; i < full; i++) {
        uint64_t parent = i == 0 ? S_ROOT_KEY : t->keys[i - 1];
        const int32_t *toks = tokens + (size_t)i * bs;
        uint64_t key = s_block_key(parent, toks, bs);
        t->keys[i] = key;
        int32_t b = t->blocks[i];
        if (!kv->keyed[b] && s_lookup(kv, key, parent, toks) == S_NIL) {
            kv->keyed[b] = true;
            kv->key[b] = key;
            kv->parent_key[b] = parent;
            memcpy(kv->tokens + (size_t)b * bs, toks, bs * sizeof *toks);
            uint32_t h = (uint32_t)(key & (kv->n_buckets - 1));
            kv->hnext[b] = kv->buckets[h];
            kv->buckets[h] = b;
        }
    }
    if (full > t->n_keyed)
        t->n_keyed = full;
}

void eng_kv_release(eng_kv_t *kv, eng_kv_table_t *t) {
    /* release the tail first, so a prefix's later blocks are evicted before its earlier ones */
    for (uint32_t i = t->n_blocks; i-- > 0;) {
        int32_t b = t->blocks[i];
        if (b < 0 || (uint32_t)b >= kv->n_blocks || kv->refcnt[b] == 0)
            continue; /* programming error; never double-free */
        if (--kv->refcnt[b] == 0) {
            if (kv->keyed[b])
                s_lru_push(kv, b);
            else
                kv->free_stack[kv->n_free_stack++] = b;
        }
    }
    t->n_blocks = t->n_keyed = 0;
}

void eng_kv_table_fini(eng_kv_table_t *t) {
    free(t->blocks);
    free(t->keys);
    t->blocks = NULL;
    t->keys = NULL;
    t->cap = t->n_blocks = t->n_keyed = 0;
}

/* om_arena.c: chunked bump allocator; see om_arena.h. */
#include "om_arena.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct om_chunk {
    struct om_chunk *next; /* older chunk */
    size_t size;           /* usable bytes in data */
    size_t used;           /* bytes handed out */
    _Alignas(16) unsigned char data[];
};

struct om_arena {
    struct om_chunk *head;     /* newest chunk; the last in the list is the first chunk */
    size_t chunk_bytes;        /* default chunk size */
    size_t used;               /* bytes handed out since reset */
    ProtobufCAllocator alloc;  /* protobuf-c view of this arena */
};

static void *s_pb_alloc(void *ud, size_t n) { return om_arena_alloc(ud, n); }
static void s_pb_free(void *ud, void *p) { (void)ud; (void)p; }

static struct om_chunk *s_chunk_new(size_t size) {
    struct om_chunk *c = malloc(sizeof *c + size);
    if (!c)
        return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

int om_arena_new(size_t chunk_bytes, om_arena_t **ret) {
    om_arena_t *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->chunk_bytes = chunk_bytes ? chunk_bytes : 64 * 1024;
    a->head = s_chunk_new(a->chunk_bytes);
    if (!a->head) {
        free(a);
        return -ENOMEM;
    }
    a->alloc.alloc = s_pb_alloc;
    a->alloc.free = s_pb_free;
    a->alloc.allocator_data = a;
    *ret = a;
    return 0;
}

om_arena_t *om_arena_free(om_arena_t *a) {
    if (!a)
        return NULL;
    for (struct om_chunk *c = a->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(a);
    return NULL;
}

void om_arena_reset(om_arena_t *a) {
    struct om_chunk *c = a->head;
    while (c->next) {
        struct om_chunk *n = c->next;
        free(c);
        c = n;
    }
    c->used = 0;
    a->head = c;
    a->used = 0;
}

void *om_arena_alloc(om_arena_t *a, size_t n) {
    size_t need = (n + 15) & ~(size_t)15;
    if (need == 0)
        need = 16;
    if (need < n)
        return NULL;
    struct om_chunk *c = a->head;
    if (c->size - c->used < need) {
        size_t sz = need > a->chunk_bytes ? need : a->chunk_bytes;
        struct om_chunk *nc = s_chunk_new(sz);
        if (!nc)
            return NULL;
        nc->next = c;
        a->head = c = nc;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->used += need;
    return p;
}

void *om_arena_calloc(om_arena_t *a, size_t n) {
    void *p = om_arena_alloc(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

void *om_arena_memdup(om_arena_t *a, const void *p, size_t n) {
    void *q = om_arena_alloc(a, n);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

char *om_arena_strdup(om_arena_t *a, const char *s) {
    if (!s)
        return NULL;
    return om_arena_memdup(a, s, strlen(s) + 1);
}

char *om_arena_printf(om_arena_t *a, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = om_arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

size_t om_arena_used(const om_arena_t *a) { return a->used; }

ProtobufCAllocator *om_arena_allocator(om_arena_t *a) { return &a->alloc; }

/* om_arena.h: a bump allocator for one request's protobuf messages and strings.
 *
 * Incoming envelopes are unpacked into an arena (om_arena_allocator() is a ProtobufCAllocator), and
 * outgoing ones are built from arena memory, so one om_arena_reset()/om_arena_free() releases a whole
 * request: no free_unpacked calls to forget. Allocations are 16-byte aligned. Not thread-safe: one
 * arena per thread or per request.
 *
 * Ownership: om_arena_new() returns a caller-owned arena; om_arena_free() accepts NULL and returns NULL.
 * Pointers from om_arena_alloc() stay valid until om_arena_reset() or om_arena_free(). */
#ifndef OM_ARENA_H
#define OM_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef struct om_arena om_arena_t;

int om_arena_new(size_t chunk_bytes, om_arena_t **ret); /* chunk_bytes 0 = 64 KiB */
om_arena_t *om_arena_free(om_arena_t *a);
void om_arena_reset(om_arena_t *a);                    /* keeps the first chunk, frees the rest */
void *om_arena_alloc(om_arena_t *a, size_t n);         /* NULL on ENOMEM; never NULL for n == 0 */
void *om_arena_calloc(om_arena_t *a, size_t n);        /* zeroed */
char *om_arena_strdup(om_arena_t *a, const char *s);   /* NULL in, NULL out */
void *om_arena_memdup(om_arena_t *a, const void *p, size_t n);
char *om_arena_printf(om_arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t om_arena_used(const om_arena_t *a);             /* bytes handed out since the last reset */
ProtobufCAllocator *om_arena_allocator(om_arena_t *a); /* borrowed, lives as long as the arena */

#endif

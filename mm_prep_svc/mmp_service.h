/* mmp_service.h: the mm_prep stage as a pure, event-driven object: request preparation and the
 * engine router. mm_prep_svc/main.c only moves frames between sockets and this object, so replay and
 * tests drive exactly the daemon's logic.
 *
 * Preparation (mmp_service_prepare): a text-only TokenizedRequest becomes a PreparedRequest with the
 * same ids and [3, n] int32 M-RoPE positions (every row 0..n-1). A request with media parts is refused
 * with UNIMPLEMENTED "multimodal input is not supported yet (stage mm_prep)".
 *
 * Routing: engines attach by sending heartbeats with EngineLoad (credits = new requests it can take).
 * Each prepared request goes to the least-loaded live engine that has credit (load = running + waiting
 * + requests assigned since its last report; credit = reported credits - assigned since the report),
 * not round-robin. With no credit anywhere the request waits in a FIFO here until an engine has
 * credit, its deadline passes (DEADLINE_EXCEEDED), or, with no live engine at all, one liveness
 * window passes (UNAVAILABLE, stage "engine"). An engine that misses `liveness` heartbeats or says
 * Control.disconnect is removed, and its in-flight requests fail UNAVAILABLE (retryable, stage
 * "engine"). Engines list finished requests in Heartbeat.done so in-flight tracking stays exact.
 * Aborts: a queued request ends here (CANCELLED Status to the decoder), an assigned one is forwarded
 * to its engine.
 *
 * Emission: every outgoing envelope goes through the emit callback with its destination (an engine's
 * routing identity, or the decoder). Envelopes are borrowed for the callback only.
 *
 * Ownership: caller-owned; mmp_service_free() accepts NULL and returns NULL. One thread. */
#ifndef MMP_SERVICE_H
#define MMP_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_arena.h"
#include "om_proto.h"

typedef struct mmp_service mmp_service_t;

enum mmp_dest {
    MMP_TO_ENGINE = 1, /* ident/ident_len name the engine's routing identity */
    MMP_TO_DECODER,    /* errors for the client, through the decoder */
};

typedef int (*mmp_emit_fn)(void *ud, enum mmp_dest dest, const uint8_t *ident, size_t ident_len,
                           const Omnipipe__Envelope *env);

typedef struct mmp_service_opts {
    uint64_t heartbeat_ms; /* engines' heartbeat interval; 0 = 500 */
    uint32_t liveness;     /* missed intervals before an engine is dead; 0 = 4 */
    size_t max_queued;     /* requests waiting for credit before RESOURCE_EXHAUSTED; 0 = 4096 */
} mmp_service_opts_t;

typedef struct mmp_engine_info {
    const char *engine_id;  /* borrowed */
    uint32_t running;       /* last report */
    uint32_t waiting;       /* last report */
    int64_t credit;         /* effective credit now */
    size_t n_inflight;      /* requests assigned and not reported done */
    uint32_t credits;       /* last report */
    uint32_t max_running;   /* last report */
    uint64_t kv_blocks_total; /* last report, blocks */
    uint64_t kv_blocks_free;  /* last report, blocks allocatable (free + evictable cached) */
    uint64_t prefix_hits;     /* last report, prompt tokens served by the prefix cache (cumulative) */
    uint64_t prefix_queries;  /* last report, prompt tokens looked up (cumulative) */
} mmp_engine_info_t;

int mmp_service_new(const mmp_service_opts_t *opts, mmp_service_t **ret);
mmp_service_t *mmp_service_free(mmp_service_t *s);

/* Pure preparation of one envelope from the tokenizer: 0 and *ret_out (prepared or status body, in a).
 * -ENOMEM only. */
int mmp_service_prepare(const Omnipipe__Envelope *in, uint64_t now_ms, om_arena_t *a,
                        Omnipipe__Envelope **ret_out);

/* An envelope from upstream (tokenizer: tokenized; tokenizer/decoder: abort). Controls are ignored. */
int mmp_service_on_upstream(mmp_service_t *s, const Omnipipe__Envelope *in, uint64_t now_ms,
                            mmp_emit_fn emit, void *ud);
/* An envelope from an engine (heartbeat with load and done keys, disconnect). */
int mmp_service_on_engine(mmp_service_t *s, const uint8_t *ident, size_t ident_len,
                          const Omnipipe__Envelope *in, uint64_t now_ms, mmp_emit_fn emit, void *ud);
/* Timers: dead engines, queued requests past their deadline or with no engine. */
int mmp_service_tick(mmp_service_t *s, uint64_t now_ms, mmp_emit_fn emit, void *ud);

size_t mmp_service_n_engines(const mmp_service_t *s);
int mmp_service_engine(const mmp_service_t *s, size_t i, mmp_engine_info_t *ret);
size_t mmp_service_n_queued(const mmp_service_t *s);
size_t mmp_service_n_inflight(const mmp_service_t *s);

#endif

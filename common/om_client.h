/* om_client.h: the client side of the pipeline, used by `omnipipe chat`, the tests and any embedding
 * program. It owns two DEALER sockets with the same routing identity: "submit" connects to the
 * tokenizer's ROUTER (requests, aborts, heartbeats) and "results" connects to the decoder's ROUTER
 * (TextDelta/Final/Status, heartbeats). Errors may come back on either.
 *
 * Guarantees no hang: every request has a deadline (default 60 s); the client-side fallback timer
 * answers DEADLINE_EXCEEDED (stage "client") one grace second after it if no stage did. Heartbeats go to
 * both stages every heartbeat_ms; when the decoder stays silent for `liveness` intervals every request
 * in flight fails UNAVAILABLE (stage "decoder"), when the tokenizer does, requests with no answer yet
 * fail UNAVAILABLE (stage "tokenizer"), both retryable. A request that cannot be sent (stage not
 * connected) waits up to one liveness window, then fails UNAVAILABLE naming the stage.
 *
 * Ownership: caller-owned; om_client_free() accepts NULL and returns NULL. Events returned by
 * om_client_poll() are borrowed until the next om_client_poll() call. One thread. */
#ifndef OM_CLIENT_H
#define OM_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_proto.h"

typedef struct om_client om_client_t;

typedef struct om_client_opts {
    const char *runtime_dir;     /* NULL = default runtime dir */
    const char *tokenizer_ep;    /* NULL = ipc://<runtime_dir>/tokenizer.sock */
    const char *decoder_ep;      /* NULL = ipc://<runtime_dir>/decoder.sock */
    const char *record_dir;      /* NULL = no capture */
    uint64_t heartbeat_ms;       /* 0 = 500 */
    uint32_t liveness;           /* missed heartbeats before a stage is declared dead; 0 = 4 */
    uint64_t default_deadline_ms; /* relative; 0 = 60000 */
} om_client_opts_t;

enum om_client_event_kind {
    OM_CLIENT_DELTA = 1, /* env->delta */
    OM_CLIENT_FINAL,     /* env->final: the request is done */
    OM_CLIENT_STATUS,    /* env->status: the request failed (done) */
    OM_CLIENT_STATS,     /* env->control->stats_reply (request_id 0): answer to om_client_stats() */
};

typedef struct om_client_event {
    enum om_client_event_kind kind;
    uint64_t request_id;
    const Omnipipe__Envelope *env; /* borrowed until the next poll */
} om_client_event_t;

int om_client_new(const om_client_opts_t *opts, om_client_t **ret, char *err, size_t errlen);
om_client_t *om_client_free(om_client_t *c);

/* Queues req (sent at once when the tokenizer is connected). deadline_ms: relative ms, 0 = default.
 * *ret_request_id is the id the events will carry. */
int om_client_submit(om_client_t *c, const Omnipipe__ChatRequest *req, uint64_t deadline_ms,
                     uint64_t *ret_request_id);
/* Sends an Abort for request_id; the request ends with Final(FINISH_ABORT) or a Status. -ENOENT if
 * not in flight. */
int om_client_abort(om_client_t *c, uint64_t request_id);
/* Waits up to timeout_ms for one event: 1 and *ret, 0 on timeout, -errno on failure. Runs timers
 * and heartbeats. */
int om_client_poll(om_client_t *c, long timeout_ms, om_client_event_t *ret);
size_t om_client_inflight(const om_client_t *c);
const uint8_t *om_client_id(const om_client_t *c, size_t *ret_len); /* routing identity, borrowed */
/* Asks for the pipeline's stats: mm_prep answers (through the tokenizer) with a StatsReply holding
 * every live engine's latest EngineLoad (KV blocks, running, prefix cache counters) and its own
 * counters; it arrives as an OM_CLIENT_STATS event. Fire and forget: no reply when mm_prep is down. */
int om_client_stats(om_client_t *c);
/* Sends raw frames on the submit socket (tests: malformed input). */
int om_client_send_raw(om_client_t *c, bool to_decoder, const void *data, size_t len);

#endif

/* om_msg.h: Envelope helpers shared by every stage: pack/unpack into a per-request arena, the
 * proto_version check, header construction and stage timestamps, and Status construction from a
 * negative errno (through the one om_err table).
 *
 * Ownership: everything returned lives in the arena passed in and dies with om_arena_reset/free;
 * nothing here frees anything. Thread-safe as long as each thread uses its own arena. No clock is
 * read here: timestamps are arguments (om_time.h reads the clocks, in main loops only). */
#ifndef OM_MSG_H
#define OM_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_arena.h"
#include "om_proto.h"
#include "om_transport.h"

/* Unpacks one Envelope frame. -EBADMSG when the bytes are not an Envelope. */
int om_msg_unpack(om_arena_t *a, const void *data, size_t len, Omnipipe__Envelope **ret);

/* Checks an unpacked envelope: a header with our proto_version and a body. -EPROTO for a missing
 * header or another version, -EBADMSG for a missing body; err says which, e.g.
 * "peer speaks proto_version 7, this build speaks 1". */
int om_msg_check(const Omnipipe__Envelope *env, char *err, size_t errlen);

/* Packs env into arena memory. */
int om_msg_pack(om_arena_t *a, const Omnipipe__Envelope *env, uint8_t **ret, size_t *ret_len);

/* A fresh header with proto_version set. client_id is copied. */
Omnipipe__Header *om_msg_header_new(om_arena_t *a, uint64_t request_id, const void *client_id,
                                    size_t client_id_len);

/* Deep copy of a header (stages included) into a. */
Omnipipe__Header *om_msg_header_copy(om_arena_t *a, const Omnipipe__Header *h);

/* Appends a StageTime {stage, recv_mono_ns, send_mono_ns, recv_wall_us} to h (arena-grown). */
int om_msg_stamp(om_arena_t *a, Omnipipe__Header *h, const char *stage, uint64_t recv_mono_ns,
                 uint64_t send_mono_ns, uint64_t recv_wall_us);

/* Sets send_mono_ns of the last StageTime of `stage` in h, if any. */
void om_msg_stamp_send(Omnipipe__Header *h, const char *stage, uint64_t send_mono_ns);

/* A Status from a negative errno: code and retryable from om_err, message printf-formatted. */
Omnipipe__Status *om_msg_status(om_arena_t *a, int neg_errno, const char *stage, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* An Envelope {hdr, status}. hdr is referenced, not copied. */
Omnipipe__Envelope *om_msg_status_env(om_arena_t *a, Omnipipe__Header *hdr, Omnipipe__Status *st);

/* An Envelope carrying Control.heartbeat {stage, pid, load?}. */
Omnipipe__Envelope *om_msg_heartbeat_env(om_arena_t *a, const char *stage, uint32_t pid,
                                         Omnipipe__EngineLoad *load);

/* An Envelope {header(request_id, client_id copied), Abort{reason}} (reason copied). */
Omnipipe__Envelope *om_msg_abort_env(om_arena_t *a, uint64_t request_id, const void *client_id, size_t client_id_len,
                                     const char *reason);

/* Body name for logs: "chat", "status", ... */
const char *om_msg_body_name(const Omnipipe__Envelope *env);

/* Whether env is a Control heartbeat / disconnect. */
bool om_msg_is_control(const Omnipipe__Envelope *env);

/* One received message, decoded. */
typedef struct om_msg_in {
    const uint8_t *ident;    /* ROUTER: the peer's routing identity (arena copy); NULL otherwise */
    size_t ident_len;        /* bytes */
    Omnipipe__Envelope *env; /* decoded envelope (arena); NULL when the frame was not an Envelope */
    int err;                 /* 0, -EBADMSG (undecodable, wrong frame count) or -EPROTO (version) */
    char errmsg[160];        /* why, when err < 0 */
    uint64_t now_ms;         /* wall clock ms at receipt (the handler's now_ms) */
    uint64_t recv_mono_ns;   /* monotonic ns at receipt */
} om_msg_in_t;

/* Receives and decodes one message without blocking. routed: a ROUTER socket (identity frame first).
 * 0 and *ret (check ret->err: a malformed message is returned with env NULL, or with env set and
 * err -EPROTO for a wrong proto_version, so the caller can answer PROTOCOL); -EAGAIN when none. */
int om_msg_recv(om_sock_t *s, om_arena_t *a, bool routed, om_msg_in_t *ret);

/* The decoding half of om_msg_recv() for frames already in memory (replay uses it to treat a recorded
 * message exactly as the daemon did). now_ms/recv_mono_ns are left 0. */
void om_msg_decode(om_arena_t *a, const ProtobufCBinaryData *frames, size_t n, bool routed,
                   om_msg_in_t *ret);

/* Packs env into a and sends it, preceded by the identity frame when ident is non-NULL. */
int om_msg_send(om_sock_t *s, om_arena_t *a, const void *ident, size_t ident_len,
                const Omnipipe__Envelope *env);

#endif

/* om_transport.h: the one send/receive choke point for every ZeroMQ socket of a daemon or client.
 *
 * Every frame that enters or leaves a process goes through om_sock_send()/om_sock_recv(). With a
 * record dir (--record DIR) each multipart message is appended to DIR/<stage>-<pid>.omcap as a
 * RecordEntry (om_capture.h) together with the now_ms the handler is given, so `omnipipe replay`
 * can feed a stage exactly what it saw. om_transport_tick() records handler runs that have no
 * input (engine steps, timers).
 *
 * Flow control (the deliberate choices, see docs/architecture.md):
 *   - every send is non-blocking (ZMQ_DONTWAIT): a stage never blocks on a slow or dead peer.
 *     A full queue returns -EAGAIN; the caller turns it into a retryable RESOURCE_EXHAUSTED or
 *     UNAVAILABLE Status for that request instead of stalling the others.
 *   - high-water marks are per socket, default 1000 messages each way (OM_HWM_DEFAULT): enough for a
 *     full engine batch of streams, small enough that a stuck stage is felt within about a second.
 *   - ROUTER sockets set ZMQ_ROUTER_MANDATORY: a reply to a vanished client fails with -EHOSTUNREACH
 *     (counted as a drop) instead of disappearing silently.
 *   - connecting DEALER/PUSH sockets set ZMQ_IMMEDIATE: nothing is queued for a peer that is not
 *     connected, so a request sent while the next stage is down fails at once (-EAGAIN) and is answered
 *     with UNAVAILABLE naming that stage, instead of being delivered minutes later.
 *   - linger is 500 ms: on shutdown queued replies get a short chance to leave (drain), never a hang.
 *
 * Ownership: om_transport_new() returns a caller-owned transport (one per process); sockets belong to
 * it and must be freed before it. One thread per socket (the one that created it); the capture file
 * is written only from sockets of the transport's thread. om_rmsg_t must be released with
 * om_rmsg_close(). */
#ifndef OM_TRANSPORT_H
#define OM_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#define OM_HWM_DEFAULT 1000
#define OM_LINGER_MS 500
#define OM_MAX_FRAMES 4 /* frames per multipart message: routing id(s) + one Envelope */

typedef struct om_transport om_transport_t;
typedef struct om_sock om_sock_t;

typedef struct om_frame {
    const void *data; /* borrowed */
    size_t len;       /* bytes */
} om_frame_t;

typedef struct om_rmsg {
    zmq_msg_t part[OM_MAX_FRAMES]; /* received frames */
    size_t n;                      /* frames in part */
    uint64_t now_ms;               /* wall clock ms at receipt: the handler's now_ms (recorded) */
    uint64_t recv_mono_ns;         /* monotonic ns at receipt, for stage stamps */
} om_rmsg_t;

typedef struct om_transport_stats {
    uint64_t n_sent;          /* messages sent */
    uint64_t n_received;      /* messages received */
    uint64_t n_send_eagain;   /* sends refused by a full queue or a missing peer */
    uint64_t n_send_unroutable; /* ROUTER sends to an unknown identity */
    uint64_t n_oversized;     /* received messages with more than OM_MAX_FRAMES frames (dropped) */
    uint64_t n_record_errors; /* capture appends that failed */
} om_transport_stats_t;

typedef struct om_sock_opts {
    int hwm;                /* send and receive high-water mark, messages; 0 = OM_HWM_DEFAULT */
    const void *routing_id; /* ZMQ_ROUTING_ID for DEALERs (client identity); NULL = zmq's */
    size_t routing_id_len;  /* bytes */
    bool no_immediate;      /* DEALER/PUSH: queue for peers that are not connected yet */
} om_sock_opts_t;

/* stage names the capture file; record_dir NULL/"" = no recording. */
int om_transport_new(const char *stage, const char *record_dir, om_transport_t **ret, char *err,
                     size_t errlen);
om_transport_t *om_transport_free(om_transport_t *t);
void *om_transport_zmq_ctx(om_transport_t *t);
/* High-water mark (messages) for sockets created from now on whose opts leave hwm 0. */
void om_transport_set_hwm(om_transport_t *t, int hwm); /* for inproc worker sockets (not recorded) */
const char *om_transport_capture_path(const om_transport_t *t); /* NULL when not recording */
void om_transport_get_stats(const om_transport_t *t, om_transport_stats_t *ret);
/* Records a TICK entry (a handler run without input, at now_ms) under the logical name. */
int om_transport_tick(om_transport_t *t, const char *name, uint64_t now_ms);

/* Records the handler's configuration (n "key=value" strings) as a TICK entry on socket "config",
 * so replay builds the same service (model dir, backend, ...). No-op when not recording. */
int om_transport_record_config(om_transport_t *t, const char *const *kv, size_t n);

/* type is ZMQ_ROUTER, ZMQ_DEALER, ZMQ_PUSH, ZMQ_PULL, ZMQ_PAIR...; name is the logical socket name
 * written into captures ("frontend", "downstream", ...), borrowed for the socket's life. */
int om_sock_new(om_transport_t *t, int type, const char *name, const om_sock_opts_t *opts,
                om_sock_t **ret);
om_sock_t *om_sock_free(om_sock_t *s);
int om_sock_bind(om_sock_t *s, const char *endpoint);    /* -errno (e.g. -EADDRINUSE) */
int om_sock_connect(om_sock_t *s, const char *endpoint); /* asynchronous: the peer may come later */
void *om_sock_zmq(om_sock_t *s);                         /* for zmq_pollitem_t.socket */
const char *om_sock_name(const om_sock_t *s);

/* Sends n frames as one multipart message, never blocking. -EAGAIN: queue full or no peer;
 * -EHOSTUNREACH: ROUTER with an unknown identity; other -errno from zmq. On failure nothing was
 * sent. Recorded only when sent. */
int om_sock_send(om_sock_t *s, const om_frame_t *frames, size_t n);

/* Receives one multipart message without blocking: 0 and *m filled (release with om_rmsg_close),
 * -EAGAIN when none is waiting, -EMSGSIZE when it had more than OM_MAX_FRAMES frames (drained,
 * counted, nothing to close). Recorded with m->now_ms. */
int om_sock_recv(om_sock_t *s, om_rmsg_t *m);
void om_rmsg_close(om_rmsg_t *m);
static inline const void *om_rmsg_data(om_rmsg_t *m, size_t i) { return zmq_msg_data(&m->part[i]); }
static inline size_t om_rmsg_len(om_rmsg_t *m, size_t i) { return zmq_msg_size(&m->part[i]); }

#endif

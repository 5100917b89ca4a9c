/* om_transport.c: ZeroMQ sockets behind one send/receive choke point, with optional recording;
 * see om_transport.h for the flow-control choices. */
#include "om_transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "om_capture.h"
#include "om_time.h"

struct om_transport {
    void *ctx;                  /* zmq context */
    om_capture_writer_t *cap;   /* NULL unless recording */
    om_transport_stats_t stats; /* counters */
    int hwm;                    /* default high-water mark, messages */
};

struct om_sock {
    om_transport_t *t; /* owner */
    void *z;           /* zmq socket */
    int type;          /* ZMQ_* */
    const char *name;  /* logical name (borrowed) */
};

int om_transport_new(const char *stage, const char *record_dir, om_transport_t **ret, char *err,
                     size_t errlen) {
    om_transport_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->ctx = zmq_ctx_new();
    if (!t->ctx) {
        free(t);
        snprintf(err, errlen, "zmq_ctx_new failed: %s", zmq_strerror(errno));
        return -ENOMEM;
    }
    if (record_dir && *record_dir) {
        int r = om_capture_writer_new(record_dir, stage, (long)getpid(), &t->cap, err, errlen);
        if (r < 0) {
            zmq_ctx_term(t->ctx);
            free(t);
            return r;
        }
    }
    *ret = t;
    return 0;
}

om_transport_t *om_transport_free(om_transport_t *t) {
    if (!t)
        return NULL;
    zmq_ctx_term(t->ctx);
    om_capture_writer_free(t->cap);
    free(t);
    return NULL;
}

void *om_transport_zmq_ctx(om_transport_t *t) { return t->ctx; }

void om_transport_set_hwm(om_transport_t *t, int hwm) { t->hwm = hwm > 0 ? hwm : 0; }

const char *om_transport_capture_path(const om_transport_t *t) {
    return t->cap ? om_capture_writer_path(t->cap) : NULL;
}

void om_transport_get_stats(const om_transport_t *t, om_transport_stats_t *ret) { *ret = t->stats; }

static void s_record(om_transport_t *t, Omnipipe__RecordEntry__Dir dir, const char *name,
                     ProtobufCBinaryData *frames, size_t n, uint64_t now_ms) {
    Omnipipe__RecordEntry e = OMNIPIPE__RECORD_ENTRY__INIT;
    e.has_t_mono_ns = true;
    e.t_mono_ns = om_time_mono_ns();
    e.has_dir = true;
    e.dir = dir;
    e.socket = (char *)name;
    e.frames = frames;
    e.n_frames = n;
    e.has_now_ms = now_ms != 0;
    e.now_ms = now_ms;
    if (om_capture_writer_append(t->cap, &e) < 0)
        t->stats.n_record_errors++;
}

int om_transport_tick(om_transport_t *t, const char *name, uint64_t now_ms) {
    if (t->cap)
        s_record(t, OMNIPIPE__RECORD_ENTRY__DIR__TICK, name, NULL, 0, now_ms);
    return 0;
}

int om_transport_record_config(om_transport_t *t, const char *const *kv, size_t n) {
    if (!t->cap)
        return 0;
    ProtobufCBinaryData f[32];
    if (n > 32)
        n = 32;
    for (size_t i = 0; i < n; i++) {
        f[i].data = (uint8_t *)kv[i];
        f[i].len = strlen(kv[i]);
    }
    s_record(t, OMNIPIPE__RECORD_ENTRY__DIR__TICK, "config", f, n, 0);
    return 0;
}

int om_sock_new(om_transport_t *t, int type, const char *name, const om_sock_opts_t *opts,
                om_sock_t **ret) {
    om_sock_opts_t def = {0};
    if (!opts)
        opts = &def;
    om_sock_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->z = zmq_socket(t->ctx, type);
    if (!s->z) {
        int r = -errno;
        free(s);
        return r;
    }
    s->t = t;
    s->type = type;
    s->name = name;
    int hwm = opts->hwm > 0 ? opts->hwm : t->hwm > 0 ? t->hwm : OM_HWM_DEFAULT;
    int linger = OM_LINGER_MS;
    int one = 1;
    zmq_setsockopt(s->z, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->z, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->z, ZMQ_LINGER, &linger, sizeof linger);
    if (type == ZMQ_ROUTER)
        zmq_setsockopt(s->z, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if ((type == ZMQ_DEALER || type == ZMQ_PUSH) && !opts->no_immediate)
        zmq_setsockopt(s->z, ZMQ_IMMEDIATE, &one, sizeof one);
    if (opts->routing_id && opts->routing_id_len)
        zmq_setsockopt(s->z, ZMQ_ROUTING_ID, opts->routing_id, opts->routing_id_len);
    *ret = s;
    return 0;
}

om_sock_t *om_sock_free(om_sock_t *s) {
    if (!s)
        return NULL;
    zmq_close(s->z);
    free(s);
    return NULL;
}

int om_sock_bind(om_sock_t *s, const char *endpoint) {
    return zmq_bind(s->z, endpoint) < 0 ? -errno : 0;
}

int om_sock_connect(om_sock_t *s, const char *endpoint) {
    return zmq_connect(s->z, endpoint) < 0 ? -errno : 0;
}

void *om_sock_zmq(om_sock_t *s) { return s->z; }
const char *om_sock_name(const om_sock_t *s) { return s->name; }

int om_sock_send(om_sock_t *s, const om_frame_t *frames, size_t n) {
    if (n == 0 || n > OM_MAX_FRAMES)
        return -EINVAL;
    /* zmq_send of the first frame with SNDMORE commits the message only when the last frame is
     * queued; with DONTWAIT a full pipe fails on the first frame, so nothing partial is left. */
    for (size_t i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        if (zmq_send(s->z, frames[i].data, frames[i].len, flags) < 0) {
            int r = -errno;
            if (r == -EAGAIN)
                s->t->stats.n_send_eagain++;
            else if (r == -EHOSTUNREACH)
                s->t->stats.n_send_unroutable++;
            return r;
        }
    }
    s->t->stats.n_sent++;
    if (s->t->cap) {
        ProtobufCBinaryData f[OM_MAX_FRAMES];
        for (size_t i = 0; i < n; i++) {
            f[i].data = (uint8_t *)frames[i].data;
            f[i].len = frames[i].len;
        }
        s_record(s->t, OMNIPIPE__RECORD_ENTRY__DIR__OUT, s->name, f, n, 0);
    }
    return 0;
}

int om_sock_recv(om_sock_t *s, om_rmsg_t *m) {
    m->n = 0;
    int more = 1;
    bool oversized = false;
    while (more) {
        zmq_msg_t tmp, *dst = m->n < OM_MAX_FRAMES ? &m->part[m->n] : &tmp;
        zmq_msg_init(dst);
        /* the first frame may be absent; later frames of a multipart message are always there */
        if (zmq_msg_recv(dst, s->z, m->n == 0 && !oversized ? ZMQ_DONTWAIT : 0) < 0) {
            int r = -errno;
            zmq_msg_close(dst);
            for (size_t i = 0; i < m->n; i++)
                zmq_msg_close(&m->part[i]);
            m->n = 0;
            return r;
        }
        more = zmq_msg_more(dst);
        if (dst == &tmp) {
            zmq_msg_close(&tmp);
            oversized = true;
        } else {
            m->n++;
        }
    }
    if (oversized) {
        for (size_t i = 0; i < m->n; i++)
            zmq_msg_close(&m->part[i]);
        m->n = 0;
        s->t->stats.n_oversized++;
        return -EMSGSIZE;
    }
    m->now_ms = om_time_wall_ms();
    m->recv_mono_ns = om_time_mono_ns();
    s->t->stats.n_received++;
    if (s->t->cap) {
        ProtobufCBinaryData f[OM_MAX_FRAMES];
        for (size_t i = 0; i < m->n; i++) {
            f[i].data = zmq_msg_data(&m->part[i]);
            f[i].len = zmq_msg_size(&m->part[i]);
        }
        s_record(s->t, OMNIPIPE__RECORD_ENTRY__DIR__IN, s->name, f, m->n, m->now_ms);
    }
    return 0;
}

void om_rmsg_close(om_rmsg_t *m) {
    for (size_t i = 0; i < m->n; i++)
        zmq_msg_close(&m->part[i]);
    m->n = 0;
}

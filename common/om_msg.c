/* om_msg.c: Envelope pack/unpack, version check, headers, stage stamps and Status; see om_msg.h. */
#include "om_msg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "om_err.h"

int om_msg_unpack(om_arena_t *a, const void *data, size_t len, Omnipipe__Envelope **ret) {
    Omnipipe__Envelope *env = omnipipe__envelope__unpack(om_arena_allocator(a), len, data);
    if (!env)
        return -EBADMSG;
    *ret = env;
    return 0;
}

int om_msg_check(const Omnipipe__Envelope *env, char *err, size_t errlen) {
    if (!env->header || !env->header->has_proto_version) {
        snprintf(err, errlen, "envelope has no header.proto_version (this build speaks %u)",
                 OM_PROTO_VERSION);
        return -EPROTO;
    }
    if (env->header->proto_version != OM_PROTO_VERSION) {
        snprintf(err, errlen, "peer speaks proto_version %u, this build speaks %u",
                 env->header->proto_version, OM_PROTO_VERSION);
        return -EPROTO;
    }
    if (env->body_case == OMNIPIPE__ENVELOPE__BODY__NOT_SET) {
        snprintf(err, errlen, "envelope has no body");
        return -EBADMSG;
    }
    return 0;
}

int om_msg_pack(om_arena_t *a, const Omnipipe__Envelope *env, uint8_t **ret, size_t *ret_len) {
    size_t n = omnipipe__envelope__get_packed_size(env);
    uint8_t *buf = om_arena_alloc(a, n);
    if (!buf)
        return -ENOMEM;
    size_t m = omnipipe__envelope__pack(env, buf);
    if (m != n)
        return -EIO;
    *ret = buf;
    *ret_len = n;
    return 0;
}

Omnipipe__Header *om_msg_header_new(om_arena_t *a, uint64_t request_id, const void *client_id,
                                    size_t client_id_len) {
    Omnipipe__Header *h = om_arena_alloc(a, sizeof *h);
    if (!h)
        return NULL;
    omnipipe__header__init(h);
    h->has_proto_version = true;
    h->proto_version = OM_PROTO_VERSION;
    h->has_request_id = true;
    h->request_id = request_id;
    if (client_id) {
        h->has_client_id = true;
        h->client_id.data = om_arena_memdup(a, client_id, client_id_len);
        h->client_id.len = client_id_len;
        if (!h->client_id.data)
            return NULL;
    }
    return h;
}

Omnipipe__Header *om_msg_header_copy(om_arena_t *a, const Omnipipe__Header *src) {
    Omnipipe__Header *h = om_arena_alloc(a, sizeof *h);
    if (!h)
        return NULL;
    *h = *src;
    if (src->has_client_id)
        h->client_id.data = om_arena_memdup(a, src->client_id.data, src->client_id.len);
    h->trace_id = om_arena_strdup(a, src->trace_id);
    h->engine_id = om_arena_strdup(a, src->engine_id);
    h->stages = NULL;
    h->n_stages = 0;
    for (size_t i = 0; i < src->n_stages; i++) {
        const Omnipipe__StageTime *st = src->stages[i];
        if (om_msg_stamp(a, h, st->stage, st->recv_mono_ns, st->send_mono_ns, st->recv_wall_us) < 0)
            return NULL;
        Omnipipe__StageTime *d = h->stages[h->n_stages - 1];
        d->has_recv_mono_ns = st->has_recv_mono_ns;
        d->has_send_mono_ns = st->has_send_mono_ns;
        d->has_recv_wall_us = st->has_recv_wall_us;
    }
    return h;
}

int om_msg_stamp(om_arena_t *a, Omnipipe__Header *h, const char *stage, uint64_t recv_mono_ns,
                 uint64_t send_mono_ns, uint64_t recv_wall_us) {
    Omnipipe__StageTime **v = om_arena_alloc(a, (h->n_stages + 1) * sizeof *v);
    Omnipipe__StageTime *st = om_arena_alloc(a, sizeof *st);
    if (!v || !st)
        return -ENOMEM;
    omnipipe__stage_time__init(st);
    st->stage = om_arena_strdup(a, stage);
    st->has_recv_mono_ns = recv_mono_ns != 0;
    st->recv_mono_ns = recv_mono_ns;
    st->has_send_mono_ns = send_mono_ns != 0;
    st->send_mono_ns = send_mono_ns;
    st->has_recv_wall_us = recv_wall_us != 0;
    st->recv_wall_us = recv_wall_us;
    if (h->n_stages)
        memcpy(v, h->stages, h->n_stages * sizeof *v);
    v[h->n_stages] = st;
    h->stages = v;
    h->n_stages++;
    return 0;
}

void om_msg_stamp_send(Omnipipe__Header *h, const char *stage, uint64_t send_mono_ns) {
    for (size_t i = h->n_stages; i-- > 0;)
        if (h->stages[i]->stage && strcmp(h->stages[i]->stage, stage) == 0) {
            h->stages[i]->has_send_mono_ns = true;
            h->stages[i]->send_mono_ns = send_mono_ns;
            return;
        }
}

Omnipipe__Status *om_msg_status(om_arena_t *a, int neg_errno, const char *stage, const char *fmt, ...) {
    Omnipipe__Status *st = om_arena_alloc(a, sizeof *st);
    if (!st)
        return NULL;
    omnipipe__status__init(st);
    st->has_code = true;
    st->code = (Omnipipe__Code)om_err_to_code(neg_errno);
    st->has_retryable = true;
    st->retryable = om_err_retryable(neg_errno);
    st->stage = om_arena_strdup(a, stage);
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    st->message = om_arena_strdup(a, buf);
    if (!st->message || !st->stage)
        return NULL;
    return st;
}

Omnipipe__Envelope *om_msg_status_env(om_arena_t *a, Omnipipe__Header *hdr, Omnipipe__Status *st) {
    Omnipipe__Envelope *env = om_arena_alloc(a, sizeof *env);
    if (!env || !st)
        return NULL;
    omnipipe__envelope__init(env);
    env->header = hdr;
    env->body_case = OMNIPIPE__ENVELOPE__BODY_STATUS;
    env->status = st;
    return env;
}

Omnipipe__Envelope *om_msg_heartbeat_env(om_arena_t *a, const char *stage, uint32_t pid,
                                         Omnipipe__EngineLoad *load) {
    Omnipipe__Envelope *env = om_arena_alloc(a, sizeof *env);
    Omnipipe__Control *c = om_arena_alloc(a, sizeof *c);
    Omnipipe__Heartbeat *hb = om_arena_alloc(a, sizeof *hb);
    if (!env || !c || !hb)
        return NULL;
    omnipipe__envelope__init(env);
    omnipipe__control__init(c);
    omnipipe__heartbeat__init(hb);
    hb->stage = om_arena_strdup(a, stage);
    hb->has_pid = true;
    hb->pid = pid;
    hb->load = load;
    c->kind_case = OMNIPIPE__CONTROL__KIND_HEARTBEAT;
    c->heartbeat = hb;
    env->header = om_msg_header_new(a, 0, NULL, 0);
    env->body_case = OMNIPIPE__ENVELOPE__BODY_CONTROL;
    env->control = c;
    return env->header ? env : NULL;
}

Omnipipe__Envelope *om_msg_abort_env(om_arena_t *a, uint64_t request_id, const void *client_id, size_t client_id_len,
                                     const char *reason) {
    Omnipipe__Envelope *env = om_arena_alloc(a, sizeof *env);
    Omnipipe__Abort *ab = om_arena_alloc(a, sizeof *ab);
    if (!env || !ab)
        return NULL;
    omnipipe__envelope__init(env);
    omnipipe__abort__init(ab);
    ab->reason = om_arena_strdup(a, reason);
    env->header = om_msg_header_new(a, request_id, client_id, client_id_len);
    env->body_case = OMNIPIPE__ENVELOPE__BODY_ABORT;
    env->abort = ab;
    return env->header ? env : NULL;
}

const char *om_msg_body_name(const Omnipipe__Envelope *env) {
    switch (env->body_case) {
    case OMNIPIPE__ENVELOPE__BODY_CHAT: return "chat";
    case OMNIPIPE__ENVELOPE__BODY_TOKENIZED: return "tokenized";
    case OMNIPIPE__ENVELOPE__BODY_PREPARED: return "prepared";
    case OMNIPIPE__ENVELOPE__BODY_BATCH: return "batch";
    case OMNIPIPE__ENVELOPE__BODY_DELTA: return "delta";
    case OMNIPIPE__ENVELOPE__BODY_FINAL: return "final";
    case OMNIPIPE__ENVELOPE__BODY_ABORT: return "abort";
    case OMNIPIPE__ENVELOPE__BODY_STATUS: return "status";
    case OMNIPIPE__ENVELOPE__BODY_CONTROL: return "control";
    default: return "none";
    }
}

bool om_msg_is_control(const Omnipipe__Envelope *env) {
    return env->body_case == OMNIPIPE__ENVELOPE__BODY_CONTROL;
}

void om_msg_decode(om_arena_t *a, const ProtobufCBinaryData *frames, size_t n, bool routed,
                   om_msg_in_t *ret) {
    memset(ret, 0, sizeof *ret);
    size_t want = routed ? 2 : 1;
    if (routed && n >= 1) {
        ret->ident_len = frames[0].len;
        ret->ident = om_arena_memdup(a, frames[0].data, frames[0].len);
    }
    if (n != want) {
        ret->err = -EBADMSG;
        snprintf(ret->errmsg, sizeof ret->errmsg, "expected %zu frame(s), got %zu", want, n);
    } else if (om_msg_unpack(a, frames[want - 1].data, frames[want - 1].len, &ret->env) < 0) {
        ret->err = -EBADMSG;
        snprintf(ret->errmsg, sizeof ret->errmsg, "frame of %zu bytes is not an omnipipe Envelope",
                 frames[want - 1].len);
    } else {
        ret->err = om_msg_check(ret->env, ret->errmsg, sizeof ret->errmsg);
        if (ret->err == -EBADMSG)
            ret->env = NULL;
    }
}

int om_msg_recv(om_sock_t *s, om_arena_t *a, bool routed, om_msg_in_t *ret) {
    om_rmsg_t m;
    int r;
    do
        r = om_sock_recv(s, &m);
    while (r == -EMSGSIZE); /* oversized messages are counted and dropped by the transport */
    if (r < 0)
        return r;
    ProtobufCBinaryData f[OM_MAX_FRAMES];
    for (size_t i = 0; i < m.n; i++) {
        f[i].data = (uint8_t *)om_rmsg_data(&m, i);
        f[i].len = om_rmsg_len(&m, i);
    }
    om_msg_decode(a, f, m.n, routed, ret);
    ret->now_ms = m.now_ms;
    ret->recv_mono_ns = m.recv_mono_ns;
    om_rmsg_close(&m);
    return 0;
}

int om_msg_send(om_sock_t *s, om_arena_t *a, const void *ident, size_t ident_len,
                const Omnipipe__Envelope *env) {
    uint8_t *buf;
    size_t len;
    int r = om_msg_pack(a, env, &buf, &len);
    if (r < 0)
        return r;
    om_frame_t f[2] = {{ident, ident_len}, {buf, len}};
    return ident ? om_sock_send(s, f, 2) : om_sock_send(s, &f[1], 1);
}

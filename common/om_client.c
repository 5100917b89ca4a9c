/* om_client.c: client DEALER pair, deadlines, heartbeats and the fallback timer; see om_client.h. */
#include "om_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "om_arena.h"
#include "om_config.h"
#include "om_msg.h"
#include "om_time.h"
#include "om_transport.h"

typedef struct om_creq {
    uint64_t request_id;   /* client-unique */
    uint64_t deadline_ms;  /* wall clock ms */
    uint64_t queued_ms;    /* monotonic ms when submitted */
    bool answered;         /* any event seen */
    bool sent;             /* handed to the submit socket */
    bool aborted;          /* aborted before it was sent: ends locally as CANCELLED */
    uint8_t *frame;        /* packed envelope while unsent (malloc'd) */
    size_t frame_len;      /* bytes */
} om_creq_t;

struct om_client {
    om_transport_t *t;
    om_sock_t *submit;        /* DEALER -> tokenizer ROUTER */
    om_sock_t *results;       /* DEALER -> decoder ROUTER */
    uint8_t id[24];           /* routing identity */
    size_t id_len;
    om_arena_t *arena;        /* the current event's memory */
    om_creq_t *reqs;          /* in flight */
    size_t n_reqs, cap_reqs;
    uint64_t next_id;         /* next request id */
    uint64_t hb_ms;           /* heartbeat interval */
    uint32_t liveness;        /* intervals */
    uint64_t default_deadline_ms;
    uint64_t last_hb_sent;    /* monotonic ms */
    uint64_t tok_heard;       /* monotonic ms of the last frame from the tokenizer; 0 = never */
    uint64_t dec_heard;       /* same for the decoder */
    uint64_t started;         /* monotonic ms */
    char tok_ep[4096];        /* endpoints, for reconnects */
    char dec_ep[4096];
    uint64_t tok_reset;       /* monotonic ms of the last (re)connect of "submit" */
    uint64_t dec_reset;       /* same for "results" */
};

static int s_send_env(om_sock_t *s, om_arena_t *a, const Omnipipe__Envelope *env) {
    uint8_t *buf;
    size_t len;
    int r = om_msg_pack(a, env, &buf, &len);
    if (r < 0)
        return r;
    om_frame_t f = {buf, len};
    return om_sock_send(s, &f, 1);
}

static void s_heartbeat(om_client_t *c) {
    om_arena_t *a;
    if (om_arena_new(4096, &a) < 0)
        return;
    Omnipipe__Envelope *env = om_msg_heartbeat_env(a, OM_STAGE_CLIENT, (uint32_t)getpid(), NULL);
    if (env) {
        s_send_env(c->submit, a, env);
        s_send_env(c->results, a, env);
    }
    om_arena_free(a);
}

int om_client_new(const om_client_opts_t *opts, om_client_t **ret, char *err, size_t errlen) {
    om_client_opts_t def = {0};
    if (!opts)
        opts = &def;
    om_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    char tok_ep[4096], dec_ep[4096];
    int r = 0;
    if (opts->tokenizer_ep)
        snprintf(tok_ep, sizeof tok_ep, "%s", opts->tokenizer_ep);
    else
        r = om_config_endpoint_in(opts->runtime_dir, "tokenizer", tok_ep, sizeof tok_ep);
    if (r == 0 && opts->decoder_ep)
        snprintf(dec_ep, sizeof dec_ep, "%s", opts->decoder_ep);
    else if (r == 0)
        r = om_config_endpoint_in(opts->runtime_dir, "decoder", dec_ep, sizeof dec_ep);
    if (r < 0) {
        snprintf(err, errlen, "runtime dir: %s", strerror(-r));
        free(c);
        return r;
    }
    uint64_t rnd = om_time_mono_ns() ^ ((uint64_t)getpid() << 32);
    c->id_len = (size_t)snprintf((char *)c->id, sizeof c->id, "c%d-%08llx", (int)getpid(),
                                 (unsigned long long)(rnd & 0xffffffffull));
    c->hb_ms = opts->heartbeat_ms ? opts->heartbeat_ms : 500;
    c->liveness = opts->liveness ? opts->liveness : 4;
    c->default_deadline_ms = opts->default_deadline_ms ? opts->default_deadline_ms : 60000;
    c->next_id = 1;
    c->started = om_time_mono_ms();
    r = om_transport_new(OM_STAGE_CLIENT, opts->record_dir, &c->t, err, errlen);
    if (r < 0) {
        free(c);
        return r;
    }
    om_sock_opts_t so = {.routing_id = c->id, .routing_id_len = c->id_len};
    if ((r = om_arena_new(0, &c->arena)) < 0 ||
        (r = om_sock_new(c->t, ZMQ_DEALER, "submit", &so, &c->submit)) < 0 ||
        (r = om_sock_new(c->t, ZMQ_DEALER, "results", &so, &c->results)) < 0) {
        snprintf(err, errlen, "cannot create client sockets: %s", strerror(-r));
        om_client_free(c);
        return r;
    }
    snprintf(c->tok_ep, sizeof c->tok_ep, "%s", tok_ep);
    snprintf(c->dec_ep, sizeof c->dec_ep, "%s", dec_ep);
    c->tok_reset = c->dec_reset = c->started;
    if ((r = om_sock_connect(c->submit, tok_ep)) < 0 || (r = om_sock_connect(c->results, dec_ep)) < 0) {
        snprintf(err, errlen, "cannot connect to '%s' / '%s': %s", tok_ep, dec_ep, zmq_strerror(-r));
        om_client_free(c);
        return r;
    }
    *ret = c;
    return 0;
}

om_client_t *om_client_free(om_client_t *c) {
    if (!c)
        return NULL;
    for (size_t i = 0; i < c->n_reqs; i++)
        free(c->reqs[i].frame);
    free(c->reqs);
    om_sock_free(c->submit);
    om_sock_free(c->results);
    om_transport_free(c->t);
    om_arena_free(c->arena);
    free(c);
    return NULL;
}

const uint8_t *om_client_id(const om_client_t *c, size_t *ret_len) {
    *ret_len = c->id_len;
    return c->id;
}

size_t om_client_inflight(const om_client_t *c) { return c->n_reqs; }

/* the decoder answered within two heartbeat intervals: its ROUTER knows our identity */
static bool s_dec_fresh(const om_client_t *c, uint64_t mono) {
    return c->dec_heard && mono - c->dec_heard <= 2 * c->hb_ms;
}

static om_creq_t *s_find(om_client_t *c, uint64_t id) {
    for (size_t i = 0; i < c->n_reqs; i++)
        if (c->reqs[i].request_id == id)
            return &c->reqs[i];
    return NULL;
}

static void s_remove(om_client_t *c, uint64_t id) {
    for (size_t i = 0; i < c->n_reqs; i++)
        if (c->reqs[i].request_id == id) {
            free(c->reqs[i].frame);
            c->reqs[i] = c->reqs[--c->n_reqs];
            return;
        }
}

int om_client_submit(om_client_t *c, const Omnipipe__ChatRequest *req, uint64_t deadline_ms,
                     uint64_t *ret_request_id) {
    if (c->n_reqs == c->cap_reqs) {
        size_t cap = c->cap_reqs ? c->cap_reqs * 2 : 16;
        om_creq_t *v = realloc(c->reqs, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        c->reqs = v;
        c->cap_reqs = cap;
    }
    om_arena_t *a;
    int r = om_arena_new(0, &a);
    if (r < 0)
        return r;
    uint64_t id = c->next_id++;
    uint64_t now = om_time_wall_ms();
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = om_msg_header_new(a, id, c->id, c->id_len);
    if (!env.header) {
        om_arena_free(a);
        return -ENOMEM;
    }
    env.header->has_deadline_unix_ms = true;
    env.header->deadline_unix_ms = now + (deadline_ms ? deadline_ms : c->default_deadline_ms);
    om_msg_stamp(a, env.header, OM_STAGE_CLIENT, 0, om_time_mono_ns(), 0);
    env.body_case = OMNIPIPE__ENVELOPE__BODY_CHAT;
    env.chat = (Omnipipe__ChatRequest *)req;
    uint8_t *buf;
    size_t len;
    r = om_msg_pack(a, &env, &buf, &len);
    if (r < 0) {
        om_arena_free(a);
        return r;
    }
    om_creq_t *q = &c->reqs[c->n_reqs];
    memset(q, 0, sizeof *q);
    q->request_id = id;
    q->deadline_ms = env.header->deadline_unix_ms;
    q->queued_ms = om_time_mono_ms();
    q->frame = malloc(len);
    if (!q->frame) {
        om_arena_free(a);
        return -ENOMEM;
    }
    memcpy(q->frame, buf, len);
    q->frame_len = len;
    om_arena_free(a);
    c->n_reqs++;
    /* send at once if the decoder answered lately (results can reach us); otherwise the poll loop
     * sends it once the decoder answers a heartbeat: a reply must not race our reconnect */
    if (s_dec_fresh(c, om_time_mono_ms())) {
        om_frame_t f = {q->frame, q->frame_len};
        if (om_sock_send(c->submit, &f, 1) == 0) {
            q->sent = true;
            free(q->frame);
            q->frame = NULL;
        }
    }
    *ret_request_id = id;
    return 0;
}

int om_client_abort(om_client_t *c, uint64_t request_id) {
    om_creq_t *q = s_find(c, request_id);
    if (!q)
        return -ENOENT;
    if (!q->sent) { /* never left this process: nothing upstream to cancel */
        q->aborted = true;
        return 0;
    }
    om_arena_t *a;
    int r = om_arena_new(4096, &a);
    if (r < 0)
        return r;
    Omnipipe__Envelope *env = om_msg_abort_env(a, request_id, c->id, c->id_len, "client abort");
    r = env ? s_send_env(c->submit, a, env) : -ENOMEM;
    om_arena_free(a);
    return r;
}

int om_client_stats(om_client_t *c) {
    om_arena_t *a;
    int r = om_arena_new(4096, &a);
    if (r < 0)
        return r;
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    Omnipipe__Control ctl = OMNIPIPE__CONTROL__INIT;
    Omnipipe__StatsRequest sr = OMNIPIPE__STATS_REQUEST__INIT;
    ctl.kind_case = OMNIPIPE__CONTROL__KIND_STATS_REQUEST;
    ctl.stats_request = &sr;
    env.header = om_msg_header_new(a, 0, c->id, c->id_len);
    env.body_case = OMNIPIPE__ENVELOPE__BODY_CONTROL;
    env.control = &ctl;
    r = env.header ? s_send_env(c->submit, a, &env) : -ENOMEM;
    om_arena_free(a);
    return r;
}

int om_client_send_raw(om_client_t *c, bool to_decoder, const void *data, size_t len) {
    om_frame_t f = {data, len};
    return om_sock_send(to_decoder ? c->results : c->submit, &f, 1);
}

/* Builds a synthesized Status event for request q in the event arena. */
static int s_synth(om_client_t *c, uint64_t id, int neg_errno, const char *stage, const char *msg,
                   om_client_event_t *ret) {
    om_creq_t *q = s_find(c, id);
    if (q && q->sent)
        om_client_abort(c, id); /* best effort: free what the pipeline still holds for it */
    om_arena_reset(c->arena);
    Omnipipe__Header *h = om_msg_header_new(c->arena, id, c->id, c->id_len);
    Omnipipe__Status *st = om_msg_status(c->arena, neg_errno, stage, "%s", msg);
    Omnipipe__Envelope *env = om_msg_status_env(c->arena, h, st);
    if (!h || !env)
        return -ENOMEM;
    s_remove(c, id);
    ret->kind = OM_CLIENT_STATUS;
    ret->request_id = id;
    ret->env = env;
    return 1;
}

/* Paranoid Pirate: a stage silent for a whole window gets a fresh socket (close, reopen, connect),
 * so a half-dead connection cannot keep the client deaf after the stage comes back. */
static void s_reset(om_client_t *c, bool decoder, uint64_t mono) {
    om_sock_t **sp = decoder ? &c->results : &c->submit;
    om_sock_opts_t so = {.routing_id = c->id, .routing_id_len = c->id_len};
    om_sock_t *fresh;
    if (om_sock_new(c->t, ZMQ_DEALER, decoder ? "results" : "submit", &so, &fresh) < 0)
        return;
    if (om_sock_connect(fresh, decoder ? c->dec_ep : c->tok_ep) < 0) {
        om_sock_free(fresh);
        return;
    }
    om_sock_free(*sp);
    *sp = fresh;
    if (decoder)
        c->dec_reset = mono;
    else
        c->tok_reset = mono;
}

/* Timers: pending sends, deadlines, dead stages. Returns 1 with one event or 0. */
static int s_timers(om_client_t *c, om_client_event_t *ret) {
    uint64_t mono = om_time_mono_ms(), wall = om_time_wall_ms();
    uint64_t window = c->hb_ms * c->liveness;
    uint64_t tok_seen = c->tok_heard > c->tok_reset ? c->tok_heard : c->tok_reset;
    uint64_t dec_seen = c->dec_heard > c->dec_reset ? c->dec_heard : c->dec_reset;
    if (mono - tok_seen > window)
        s_reset(c, false, mono);
    if (mono - dec_seen > window)
        s_reset(c, true, mono);
    uint64_t hb = c->dec_heard && c->tok_heard ? c->hb_ms : 50; /* fast until both answered */
    if (mono - c->last_hb_sent >= hb) {
        s_heartbeat(c);
        c->last_hb_sent = mono;
    }
    for (size_t i = 0; i < c->n_reqs; i++) {
        om_creq_t *q = &c->reqs[i];
        char msg[256];
        /* a stage is dead for this request when it stayed silent for a whole window while the
         * request was waiting: a request sent just after a restart gets a chance to reconnect */
        uint64_t dec_last = c->dec_heard > q->queued_ms ? c->dec_heard : q->queued_ms;
        uint64_t tok_last = c->tok_heard > q->queued_ms ? c->tok_heard : q->queued_ms;
        bool dec_dead = mono - dec_last > window;
        bool tok_dead = mono - tok_last > window;
        if (q->aborted)
            return s_synth(c, q->request_id, -ECANCELED, OM_STAGE_CLIENT, "aborted before it was sent", ret);
        if (!q->sent && s_dec_fresh(c, mono)) {
            om_frame_t f = {q->frame, q->frame_len};
            if (om_sock_send(c->submit, &f, 1) == 0) {
                q->sent = true;
                free(q->frame);
                q->frame = NULL;
            }
        }
        if (!q->sent && mono - q->queued_ms > window) {
            const char *stage = !c->dec_heard || dec_dead ? OM_STAGE_DECODER : OM_STAGE_TOKENIZER;
            snprintf(msg, sizeof msg, "cannot reach the %s stage (no connection within %llu ms)", stage,
                     (unsigned long long)window);
            return s_synth(c, q->request_id, -EHOSTDOWN, stage, msg, ret);
        }
        if (q->sent && dec_dead) {
            snprintf(msg, sizeof msg, "decoder stopped answering heartbeats for %llu ms",
                     (unsigned long long)window);
            return s_synth(c, q->request_id, -EHOSTDOWN, OM_STAGE_DECODER, msg, ret);
        }
        if (q->sent && tok_dead && !q->answered) {
            snprintf(msg, sizeof msg, "tokenizer stopped answering heartbeats for %llu ms",
                     (unsigned long long)window);
            return s_synth(c, q->request_id, -EHOSTDOWN, OM_STAGE_TOKENIZER, msg, ret);
        }
        if (wall > q->deadline_ms + 1000) {
            snprintf(msg, sizeof msg, "no answer from the pipeline within the deadline (client fallback)");
            return s_synth(c, q->request_id, -ETIMEDOUT, OM_STAGE_CLIENT, msg, ret);
        }
    }
    return 0;
}

/* Reads one message from s; 1 with an event, 0 if it was control/unknown, -EAGAIN if none. */
static int s_read(om_client_t *c, om_sock_t *s, bool from_decoder, om_client_event_t *ret) {
    om_rmsg_t m;
    int r = om_sock_recv(s, &m);
    if (r < 0)
        return r;
    uint64_t mono = om_time_mono_ms();
    if (from_decoder)
        c->dec_heard = mono;
    else
        c->tok_heard = mono;
    om_arena_reset(c->arena);
    Omnipipe__Envelope *env = NULL;
    char err[256];
    if (m.n != 1 || om_msg_unpack(c->arena, om_rmsg_data(&m, 0), om_rmsg_len(&m, 0), &env) < 0 ||
        om_msg_check(env, err, sizeof err) < 0) {
        om_rmsg_close(&m);
        return 0; /* counted by the transport as received; dropped */
    }
    om_rmsg_close(&m);
    if (om_msg_is_control(env) && env->control->kind_case == OMNIPIPE__CONTROL__KIND_STATS_REPLY) {
        ret->kind = OM_CLIENT_STATS;
        ret->request_id = 0;
        ret->env = env;
        return 1;
    }
    if (om_msg_is_control(env) || !env->header->has_request_id)
        return 0;
    om_creq_t *q = s_find(c, env->header->request_id);
    if (!q)
        return 0; /* late answer to a request already failed or aborted */
    q->answered = true;
    ret->request_id = q->request_id;
    ret->env = env;
    switch (env->body_case) {
    case OMNIPIPE__ENVELOPE__BODY_DELTA:
        ret->kind = OM_CLIENT_DELTA;
        return 1;
    case OMNIPIPE__ENVELOPE__BODY_FINAL:
        ret->kind = OM_CLIENT_FINAL;
        s_remove(c, ret->request_id);
        return 1;
    case OMNIPIPE__ENVELOPE__BODY_STATUS:
        ret->kind = OM_CLIENT_STATUS;
        s_remove(c, ret->request_id);
        return 1;
    default:
        return 0;
    }
}

int om_client_poll(om_client_t *c, long timeout_ms, om_client_event_t *ret) {
    uint64_t end = om_time_mono_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        int r = s_timers(c, ret);
        if (r != 0)
            return r;
        for (int i = 0; i < 2; i++) {
            while ((r = s_read(c, i ? c->results : c->submit, i == 1, ret)) != -EAGAIN) {
                if (r == 1)
                    return 1;
                if (r < 0 && r != -EMSGSIZE)
                    return r;
            }
        }
        uint64_t now = om_time_mono_ms();
        if (now >= end)
            return 0;
        long wait = (long)(end - now);
        long cap = c->dec_heard && c->tok_heard ? (long)c->hb_ms / 2 : 25;
        if (wait > cap)
            wait = cap;
        zmq_pollitem_t items[2] = {{om_sock_zmq(c->submit), 0, ZMQ_POLLIN, 0},
                                   {om_sock_zmq(c->results), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, wait) < 0 && errno != EINTR)
            return -errno;
    }
}

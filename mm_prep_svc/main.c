/* mm_prep_svc: the mm_prep daemon. Takes TokenizedRequest/Abort envelopes from the tokenizer (and
 * aborts from the decoder) on its `mm_prep` ROUTER, prepares them (mmp_service: text passes straight
 * through) and routes each to the least-loaded engine with credit over the `engines` ROUTER, where
 * engines attach with heartbeats. Errors for clients go to the decoder (`decoder_in` PUSH), which
 * forwards them. Heartbeats are answered on both ROUTERs. This file is the shell only; the logic is
 * in mmp_service.c. All I/O goes through om_transport (--record DIR captures it, ticks included). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mmp_service.h"
#include "om_arena.h"
#include "om_config.h"
#include "om_daemon.h"
#include "om_log.h"
#include "om_msg.h"
#include "om_time.h"
#include "om_transport.h"

#define MMP_TICK_MS 100

typedef struct mmp_main {
    om_transport_t *t;
    om_sock_t *upstream; /* ROUTER, bound: tokenizer (requests, aborts), decoder (aborts) */
    om_sock_t *engines;  /* ROUTER, bound: engine DEALERs */
    om_sock_t *decoder;  /* PUSH -> decoder_in: Status for clients */
    mmp_service_t *svc;
    om_arena_t *out;     /* per emitted envelope */
    uint64_t recv_mono_ns;
    uint64_t n_dropped;
    uint64_t n_malformed;
} mmp_main_t;

static int s_emit(void *ud, enum mmp_dest dest, const uint8_t *ident, size_t ident_len,
                  const Omnipipe__Envelope *env) {
    mmp_main_t *m = ud;
    om_arena_reset(m->out);
    Omnipipe__Envelope e = *env;
    if (env->body_case == OMNIPIPE__ENVELOPE__BODY_PREPARED) {
        Omnipipe__Header *h = om_msg_header_copy(m->out, env->header);
        if (h) {
            om_msg_stamp(m->out, h, OM_STAGE_MM_PREP, m->recv_mono_ns, om_time_mono_ns(), 0);
            e.header = h;
        }
    }
    int r = dest == MMP_TO_ENGINE ? om_msg_send(m->engines, m->out, ident, ident_len, &e)
                                  : om_msg_send(m->decoder, m->out, NULL, 0, &e);
    if (r < 0 && dest == MMP_TO_ENGINE && env->body_case == OMNIPIPE__ENVELOPE__BODY_PREPARED) {
        /* the engine vanished between its heartbeat and this send: tell the client now */
        Omnipipe__Status *st = om_msg_status(m->out, -EHOSTDOWN, OM_STAGE_ENGINE,
                                             "engine '%s' is unreachable: %s",
                                             env->header->engine_id ? env->header->engine_id : "?",
                                             strerror(-r));
        r = om_msg_send(m->decoder, m->out, NULL, 0, om_msg_status_env(m->out, env->header, st));
    }
    if (r < 0) {
        m->n_dropped++;
        om_log_debug("request %" PRIu64 ": %s not sent: %s, dropping", env->header->request_id,
                     om_msg_body_name(env), strerror(-r));
    }
    return 0;
}

static void s_reply(mmp_main_t *m, om_sock_t *s, om_arena_t *a, om_msg_in_t *in, const char *stage) {
    Omnipipe__Envelope *reply;
    if (in->err < 0) {
        m->n_malformed++;
        uint64_t rid = in->env && in->env->header ? in->env->header->request_id : 0;
        Omnipipe__Header *h = om_msg_header_new(a, rid, NULL, 0);
        if (in->env && in->env->header && in->env->header->has_client_id) {
            h->has_client_id = true;
            h->client_id = in->env->header->client_id;
        }
        reply = om_msg_status_env(a, h, om_msg_status(a, -EPROTO, stage, "%s", in->errmsg));
        om_log_warning("%s: malformed frame: %s", om_sock_name(s), in->errmsg);
    } else {
        reply = om_msg_heartbeat_env(a, stage, (uint32_t)getpid(), NULL);
    }
    if (reply && in->ident && om_msg_send(s, a, in->ident, in->ident_len, reply) < 0)
        m->n_dropped++;
}

/* Control.stats_request (a client's, forwarded by the tokenizer with header.client_id): answered on
 * the same socket with a StatsReply carrying every live engine's latest EngineLoad and mm_prep's
 * counters; the header is echoed so the tokenizer can route the reply to the client. */
static void s_stats(mmp_main_t *m, om_arena_t *a, om_msg_in_t *in) {
    size_t ne = mmp_service_n_engines(m->svc);
    static const char *const names[] = {"engines", "inflight", "queued", "dropped", "malformed"};
    enum { NC = sizeof names / sizeof names[0] };
    uint64_t vals[NC] = {ne, mmp_service_n_inflight(m->svc), mmp_service_n_queued(m->svc), m->n_dropped,
                         m->n_malformed};
    Omnipipe__Envelope *env = om_arena_alloc(a, sizeof *env);
    Omnipipe__Control *c = om_arena_alloc(a, sizeof *c);
    Omnipipe__StatsReply *sr = om_arena_alloc(a, sizeof *sr);
    Omnipipe__EngineLoad **loads = om_arena_alloc(a, ne * sizeof *loads);
    Omnipipe__StatsReply__CountersEntry **cs = om_arena_alloc(a, NC * sizeof *cs);
    if (!env || !c || !sr || !loads || !cs)
        goto fail;
    omnipipe__envelope__init(env);
    omnipipe__control__init(c);
    omnipipe__stats_reply__init(sr);
    for (size_t i = 0; i < ne; i++) {
        mmp_engine_info_t info;
        Omnipipe__EngineLoad *l = om_arena_alloc(a, sizeof *l);
        if (!l || mmp_service_engine(m->svc, i, &info) < 0)
            goto fail;
        omnipipe__engine_load__init(l);
        l->engine_id = om_arena_strdup(a, info.engine_id);
        l->has_running = l->has_waiting = l->has_max_running = l->has_credits = true;
        l->running = info.running;
        l->waiting = info.waiting;
        l->max_running = info.max_running;
        l->credits = info.credits;
        l->has_kv_blocks_total = l->has_kv_blocks_free = true;
        l->kv_blocks_total = info.kv_blocks_total;
        l->kv_blocks_free = info.kv_blocks_free;
        l->has_prefix_cache_hits = l->has_prefix_cache_queries = true;
        l->prefix_cache_hits = info.prefix_hits;
        l->prefix_cache_queries = info.prefix_queries;
        loads[i] = l;
    }
    for (size_t i = 0; i < NC; i++) {
        Omnipipe__StatsReply__CountersEntry *e = om_arena_alloc(a, sizeof *e);
        if (!e)
            goto fail;
        omnipipe__stats_reply__counters_entry__init(e);
        e->key = (char *)names[i];
        e->has_value = true;
        e->value = vals[i];
        cs[i] = e;
    }
    sr->stage = (char *)OM_STAGE_MM_PREP;
    sr->engines = loads;
    sr->n_engines = ne;
    sr->counters = cs;
    sr->n_counters = NC;
    c->kind_case = OMNIPIPE__CONTROL__KIND_STATS_REPLY;
    c->stats_reply = sr;
    env->header = in->env->header;
    env->body_case = OMNIPIPE__ENVELOPE__BODY_CONTROL;
    env->control = c;
    if (om_msg_send(m->upstream, a, in->ident, in->ident_len, env) == 0)
        return;
fail:
    m->n_dropped++;
}

static void s_on_upstream(mmp_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    while (om_msg_recv(m->upstream, a, true, &in) == 0) {
        if (in.err == 0 && om_msg_is_control(in.env) &&
            in.env->control->kind_case == OMNIPIPE__CONTROL__KIND_STATS_REQUEST) {
            s_stats(m, a, &in);
        } else if (in.err < 0 || om_msg_is_control(in.env)) {
            s_reply(m, m->upstream, a, &in, OM_STAGE_MM_PREP);
        } else {
            m->recv_mono_ns = in.recv_mono_ns;
            int r = mmp_service_on_upstream(m->svc, in.env, in.now_ms, s_emit, m);
            if (r < 0)
                om_log_warning("request %" PRIu64 ": %s", in.env->header->request_id, strerror(-r));
        }
        om_arena_reset(a);
    }
}

static void s_on_engines(mmp_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    while (om_msg_recv(m->engines, a, true, &in) == 0) {
        if (in.err < 0) {
            s_reply(m, m->engines, a, &in, OM_STAGE_MM_PREP);
        } else {
            size_t before = mmp_service_n_engines(m->svc);
            int r = mmp_service_on_engine(m->svc, in.ident, in.ident_len, in.env, in.now_ms, s_emit, m);
            if (r < 0)
                om_log_warning("engine message: %s, ignoring", strerror(-r));
            if (mmp_service_n_engines(m->svc) > before)
                om_log_notice("engine attached (%zu now)", mmp_service_n_engines(m->svc));
            if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_CONTROL &&
                in.env->control->kind_case == OMNIPIPE__CONTROL__KIND_HEARTBEAT)
                s_reply(m, m->engines, a, &in, OM_STAGE_MM_PREP);
        }
        om_arena_reset(a);
    }
}

static int run(int argc, char **argv) {
    static const om_config_key_t keys[] = {{NULL, false, NULL, NULL}};
    char err[512], ep_up[4096], ep_eng[4096], ep_dec[4096], note[4200];
    om_config_t *cfg = NULL;
    int r = om_daemon_config(OM_STAGE_MM_PREP, "mm_prep_svc", keys, argc, argv, &cfg);
    if (r != 0)
        return r < 0 ? r : 0;
    mmp_main_t m = {0};
    om_daemon_t *d = NULL;
    om_arena_t *a = NULL;
    uint64_t hb_ms = 500, liveness = 4;
    if ((r = om_config_get_u64(cfg, "heartbeat_ms", &hb_ms, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "liveness", &liveness, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        goto out;
    }
    mmp_service_opts_t so = {.heartbeat_ms = hb_ms, .liveness = (uint32_t)liveness};
    if ((r = om_daemon_new("mm_prep", &d)) < 0 || (r = om_arena_new(0, &a)) < 0 ||
        (r = om_arena_new(0, &m.out)) < 0 || (r = mmp_service_new(&so, &m.svc)) < 0) {
        om_log_err("cannot set up: %s", strerror(-r));
        goto out;
    }
    {
        char kv_hb[64], kv_live[64];
        snprintf(kv_hb, sizeof kv_hb, "heartbeat_ms=%" PRIu64, hb_ms);
        snprintf(kv_live, sizeof kv_live, "liveness=%" PRIu64, liveness);
        const char *kv[] = {kv_hb, kv_live};
        if ((r = om_daemon_transport(cfg, OM_STAGE_MM_PREP, kv, 2, &m.t)) < 0)
            goto out;
    }
    if ((r = om_config_endpoint(cfg, "mm_prep", ep_up, sizeof ep_up)) < 0 ||
        (r = om_config_endpoint(cfg, "engines", ep_eng, sizeof ep_eng)) < 0 ||
        (r = om_config_endpoint(cfg, "decoder_in", ep_dec, sizeof ep_dec)) < 0) {
        om_log_err("cannot resolve endpoints: %s", strerror(-r));
        goto out;
    }
    /* errors for clients queue for a restarting decoder (up to the HWM) rather than vanish */
    om_sock_opts_t dopt = {.no_immediate = true};
    if ((r = om_sock_new(m.t, ZMQ_ROUTER, "upstream", NULL, &m.upstream)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_ROUTER, "engines", NULL, &m.engines)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_PUSH, "decoder", &dopt, &m.decoder)) < 0) {
        om_log_err("cannot create sockets: %s", strerror(-r));
        goto out;
    }
    if ((r = om_sock_bind(m.upstream, ep_up)) < 0 || (r = om_sock_bind(m.engines, ep_eng)) < 0) {
        om_log_err("cannot bind '%s' / '%s': %s", ep_up, ep_eng, zmq_strerror(-r));
        goto out;
    }
    if ((r = om_sock_connect(m.decoder, ep_dec)) < 0) {
        om_log_err("cannot connect '%s': %s", ep_dec, zmq_strerror(-r));
        goto out;
    }
    om_daemon_ready(d, "routing %s -> %s", ep_up, ep_eng);
    om_log_notice("ready: %s -> engines on %s%s", ep_up, ep_eng, om_daemon_recording_note(m.t, note, sizeof note));
    uint64_t next_tick = om_time_mono_ms() + MMP_TICK_MS;
    size_t last_status[3] = {0, 0, 0};
    while (!om_daemon_stopping(d)) {
        zmq_pollitem_t items[3] = {
            {0},
            {om_sock_zmq(m.upstream), 0, ZMQ_POLLIN, 0},
            {om_sock_zmq(m.engines), 0, ZMQ_POLLIN, 0},
        };
        uint64_t now = om_time_mono_ms();
        if ((r = om_daemon_poll(d, items, 3, next_tick > now ? (long)(next_tick - now) : 0)) < 0)
            break;
        if (items[2].revents & ZMQ_POLLIN)
            s_on_engines(&m, a);
        if (items[1].revents & ZMQ_POLLIN)
            s_on_upstream(&m, a);
        now = om_time_mono_ms();
        if (now >= next_tick) {
            uint64_t wall = om_time_wall_ms();
            om_transport_tick(m.t, "tick", wall);
            size_t before = mmp_service_n_engines(m.svc);
            mmp_service_tick(m.svc, wall, s_emit, &m);
            if (mmp_service_n_engines(m.svc) < before)
                om_log_warning("engine lost (%zu left)", mmp_service_n_engines(m.svc));
            size_t st[3] = {mmp_service_n_engines(m.svc), mmp_service_n_inflight(m.svc), mmp_service_n_queued(m.svc)};
            if (memcmp(st, last_status, sizeof st) != 0) {
                om_daemon_status(d, "%zu engines, %zu in flight, %zu queued", st[0], st[1], st[2]);
                memcpy(last_status, st, sizeof st);
            }
            next_tick = now + MMP_TICK_MS;
        }
        om_daemon_tick(d, now);
    }
    om_log_notice("stopping: %zu in flight, %zu queued, %" PRIu64 " dropped, %" PRIu64 " malformed",
                  mmp_service_n_inflight(m.svc), mmp_service_n_queued(m.svc), m.n_dropped,
                  m.n_malformed);
out:
    om_sock_free(m.upstream);
    om_sock_free(m.engines);
    om_sock_free(m.decoder);
    om_transport_free(m.t);
    mmp_service_free(m.svc);
    om_arena_free(m.out);
    om_arena_free(a);
    om_daemon_free(d);
    om_config_free(cfg);
    return r < 0 ? r : 0;
}

int main(int argc, char **argv) { return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS; }

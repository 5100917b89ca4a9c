/* decoder_svc: the decoder daemon. Pulls TokenBatch (engines) and Status (mm_prep) envelopes from
 * `decoder_in`, runs dec_service (incremental detokenization, stop strings, reasoning split) and
 * routes TextDelta/Final/Status to each request's client through the `decoder` ROUTER, where clients
 * also send heartbeats (answered). Requests the decoder ends itself (stop strings) are aborted
 * upstream through mm_prep. All I/O goes through om_transport (--record DIR captures it).
 * This file is the shell only: arguments, sockets, the poll loop, sd_notify. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dec_service.h"
#include "om_arena.h"
#include "om_config.h"
#include "om_daemon.h"
#include "om_log.h"
#include "om_msg.h"
#include "om_time.h"
#include "om_transport.h"

typedef struct dec_main {
    om_transport_t *t;
    om_sock_t *in;        /* PULL, bound: engines and mm_prep push here */
    om_sock_t *clients;   /* ROUTER, bound: clients' result DEALERs */
    om_sock_t *upstream;  /* DEALER -> mm_prep: aborts for requests ended here */
    dec_service_t *svc;
    om_arena_t *out;      /* per emitted envelope */
    uint64_t recv_mono_ns;
    uint64_t n_dropped;   /* replies that could not be routed */
    uint64_t n_malformed; /* bad frames received */
} dec_main_t;

static int s_emit(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env) {
    dec_main_t *m = ud;
    if (!hdr || !hdr->has_client_id)
        return -EINVAL;
    om_arena_reset(m->out);
    Omnipipe__Envelope e = *env;
    if (env->body_case != OMNIPIPE__ENVELOPE__BODY_DELTA) {
        Omnipipe__Header *h = om_msg_header_copy(m->out, hdr);
        if (h) {
            om_msg_stamp(m->out, h, OM_STAGE_DECODER, m->recv_mono_ns, om_time_mono_ns(),
                         0);
            e.header = h;
        }
    }
    int r = om_msg_send(m->clients, m->out, hdr->client_id.data, hdr->client_id.len, &e);
    if (r < 0) {
        m->n_dropped++;
        om_log_debug("request %" PRIu64 ": cannot reach client: %s, dropping", hdr->request_id,
                     strerror(-r));
    }
    return 0; /* a vanished client must not fail the other requests of the batch */
}

static void s_stop(void *ud, const Omnipipe__Header *hdr) {
    dec_main_t *m = ud;
    om_arena_t *a;
    if (om_arena_new(4096, &a) < 0)
        return;
    Omnipipe__Envelope *e =
        om_msg_abort_env(a, hdr->request_id, hdr->client_id.data, hdr->client_id.len, "ended by the decoder");
    if (e)
        om_msg_send(m->upstream, a, NULL, 0, e);
    om_arena_free(a);
}

static void s_on_input(dec_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    while (om_msg_recv(m->in, a, false, &in) == 0) {
        if (in.err < 0) {
            m->n_malformed++;
            om_log_warning("decoder_in: %s, dropping", in.errmsg);
        } else {
            m->recv_mono_ns = in.recv_mono_ns;
            int r = 0;
            if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_BATCH)
                r = dec_service_handle_batch(m->svc, in.env->batch, in.now_ms, s_emit, m);
            else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS)
                r = dec_service_fail(m->svc, in.env->header, in.env->status, s_emit, m);
            if (r < 0)
                om_log_warning("decoder_in: %s envelope: %s, ignoring", om_msg_body_name(in.env),
                               strerror(-r));
        }
        om_arena_reset(a);
    }
}

static void s_on_clients(dec_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    while (om_msg_recv(m->clients, a, true, &in) == 0) {
        Omnipipe__Envelope *reply = NULL;
        if (in.err < 0) {
            m->n_malformed++;
            Omnipipe__Header *h = in.env && in.env->header
                                      ? om_msg_header_new(a, in.env->header->request_id,
                                                          in.ident, in.ident_len)
                                      : om_msg_header_new(a, 0, in.ident, in.ident_len);
            reply = om_msg_status_env(a, h, om_msg_status(a, -EPROTO, OM_STAGE_DECODER, "%s", in.errmsg));
        } else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_CONTROL) {
            reply = om_msg_heartbeat_env(a, OM_STAGE_DECODER, (uint32_t)getpid(), NULL);
        } else {
            Omnipipe__Header *h = om_msg_header_new(a, in.env->header->request_id, in.ident, in.ident_len);
            reply = om_msg_status_env(a, h, om_msg_status(a, -EPROTO, OM_STAGE_DECODER,
                                          "the decoder endpoint takes only heartbeats, got '%s'",
                                          om_msg_body_name(in.env)));
        }
        if (reply && in.ident && om_msg_send(m->clients, a, in.ident, in.ident_len, reply) < 0)
            m->n_dropped++;
        om_arena_reset(a);
    }
}

static int run(int argc, char **argv) {
    static const om_config_key_t keys[] = {{NULL, false, NULL, NULL}};
    char err[512], ep_in[4096], ep_out[4096], ep_up[4096], note[4200];
    om_config_t *cfg = NULL;
    int r = om_daemon_config(OM_STAGE_DECODER, "decoder_svc", keys, argc, argv, &cfg);
    if (r != 0)
        return r < 0 ? r : 0;
    dec_main_t m = {0};
    om_daemon_t *d = NULL;
    om_arena_t *a = NULL;
    uint64_t hb_ms = 500;
    const char *model = om_config_get(cfg, "model");
    if (!model) {
        r = om_log_errno(-EINVAL, "--model DIR is required (the checkpoint's tokenizer)");
        goto out;
    }
    if ((r = om_config_get_u64(cfg, "heartbeat_ms", &hb_ms, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        goto out;
    }
    if ((r = om_daemon_new("decoder", &d)) < 0 || (r = om_arena_new(0, &a)) < 0 ||
        (r = om_arena_new(0, &m.out)) < 0) {
        om_log_err("cannot set up: %s", strerror(-r));
        goto out;
    }
    if ((r = dec_service_new(model, &m.svc, err, sizeof err)) < 0) {
        om_log_err("cannot load the decoder for '%s': %s", model, err);
        goto out;
    }
    dec_service_set_stop_callback(m.svc, s_stop, &m);
    {
        char kv_model[4200];
        snprintf(kv_model, sizeof kv_model, "model=%s", model);
        const char *kv[] = {kv_model};
        if ((r = om_daemon_transport(cfg, OM_STAGE_DECODER, kv, 1, &m.t)) < 0)
            goto out;
    }
    if ((r = om_config_endpoint(cfg, "decoder_in", ep_in, sizeof ep_in)) < 0 ||
        (r = om_config_endpoint(cfg, "decoder", ep_out, sizeof ep_out)) < 0 ||
        (r = om_config_endpoint(cfg, "mm_prep", ep_up, sizeof ep_up)) < 0) {
        om_log_err("cannot resolve endpoints: %s", strerror(-r));
        goto out;
    }
    if ((r = om_sock_new(m.t, ZMQ_PULL, "in", NULL, &m.in)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_ROUTER, "clients", NULL, &m.clients)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_DEALER, "upstream", NULL, &m.upstream)) < 0) {
        om_log_err("cannot create sockets: %s", strerror(-r));
        goto out;
    }
    if ((r = om_sock_bind(m.in, ep_in)) < 0 || (r = om_sock_bind(m.clients, ep_out)) < 0) {
        om_log_err("cannot bind '%s' / '%s': %s", ep_in, ep_out, zmq_strerror(-r));
        goto out;
    }
    if ((r = om_sock_connect(m.upstream, ep_up)) < 0) {
        om_log_err("cannot connect '%s': %s", ep_up, zmq_strerror(-r));
        goto out;
    }
    om_daemon_ready(d, "serving on %s", ep_out);
    om_log_notice("ready: %s -> %s%s", ep_in, ep_out, om_daemon_recording_note(m.t, note, sizeof note));
    uint64_t last_tick = om_time_mono_ms();
    while (!om_daemon_stopping(d)) {
        zmq_pollitem_t items[3] = {
            {0},
            {om_sock_zmq(m.in), 0, ZMQ_POLLIN, 0},
            {om_sock_zmq(m.clients), 0, ZMQ_POLLIN, 0},
        };
        int n_ready = om_daemon_poll(d, items, 3, (long)hb_ms);
        if (n_ready < 0) {
            r = n_ready;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            s_on_input(&m, a);
        if (items[2].revents & ZMQ_POLLIN)
            s_on_clients(&m, a);
        /* housekeeping while no batches come (expired requests of a dead engine, tombstones): when
         * the poll timed out, and at least once a second under steady client heartbeats */
        uint64_t now = om_time_mono_ms();
        if (n_ready == 0 || now - last_tick >= 1000) {
            uint64_t wall = om_time_wall_ms();
            om_transport_tick(m.t, "tick", wall);
            m.recv_mono_ns = om_time_mono_ns();
            int tr = dec_service_tick(m.svc, wall, s_emit, &m);
            if (tr < 0)
                om_log_warning("housekeeping: %s", strerror(-tr));
            last_tick = now;
        }
        om_daemon_tick(d, now);
    }
    /* drain: what is already queued still reaches its clients */
    s_on_input(&m, a);
    om_log_notice("stopping: %zu requests live, %" PRIu64 " replies dropped, %" PRIu64 " malformed frames",
                  dec_service_n_requests(m.svc), m.n_dropped, m.n_malformed);
out:
    om_sock_free(m.in);
    om_sock_free(m.clients);
    om_sock_free(m.upstream);
    om_transport_free(m.t);
    dec_service_free(m.svc);
    om_arena_free(m.out);
    om_arena_free(a);
    om_daemon_free(d);
    om_config_free(cfg);
    return r < 0 ? r : 0;
}

int main(int argc, char **argv) { return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS; }

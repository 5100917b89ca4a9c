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
    Omnipipe__Envelope e = OMNIPIPE__ENVELOPE__INIT;
    Omnipipe__Abort ab = OMNIPIPE__ABORT__INIT;
    ab.reason = "ended by the decoder";
    e.header = om_msg_header_new(a, hdr->request_id, hdr->client_id.data, hdr->client_id.len);
    e.body_case = OMNIPIPE__ENVELOPE__BODY_ABORT;
    e.abort = &ab;
    if (e.header)
        om_msg_send(m->upstream, a, NULL, 0, &e);
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
    char err[512], ep_in[4096], ep_out[4096], ep_up[4096];
    om_log_set_ident("decoder");
    om_config_t *cfg = NULL;
    int r = om_config_load_section("decoder", keys, argc, argv, &cfg, err, sizeof err);
    if (r < 0)
        return om_log_errno(r, "%s", err);
    if (om_config_get_bool(cfg, "help")) {
        om_config_usage(cfg, "decoder_svc");
        om_config_free(cfg);
        return 0;
    }
    int lvl = om_log_parse_level(om_config_get(cfg, "log_level"));
    if (lvl >= 0)
        om_log_max_level = lvl;
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
    if ((r = om_transport_new(OM_STAGE_DECODER, om_config_get(cfg, "record"), &m.t, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        goto out;
    }
    {
        uint64_t hwm = 0;
        if ((r = om_config_get_u64(cfg, "hwm", &hwm, err, sizeof err)) < 0 || hwm > 1000000) {
            om_log_err("%s", r < 0 ? err : "hwm: at most 1000000 messages");
            r = -EINVAL;
            goto out;
        }
        om_transport_set_hwm(m.t, (int)hwm);
    }
    {
        char kv_model[4200];
        snprintf(kv_model, sizeof kv_model, "model=%s", model);
        const char *kv[] = {kv_model};
        om_transport_record_config(m.t, kv, 1);
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
    om_log_notice("ready: %s -> %s%s%s", ep_in, ep_out,
                  om_transport_capture_path(m.t) ? ", recording to " : "",
                  om_transport_capture_path(m.t) ? om_transport_capture_path(m.t) : "");
    while (!om_daemon_stopping(d)) {
        zmq_pollitem_t items[3] = {
            {NULL, om_daemon_fd(d), ZMQ_POLLIN, 0},
            {om_sock_zmq(m.in), 0, ZMQ_POLLIN, 0},
            {om_sock_zmq(m.clients), 0, ZMQ_POLLIN, 0},
        };
        long timeout = (long)hb_ms;
        long wd = om_daemon_watchdog_poll_ms(d);
        if (wd > 0 && wd < timeout)
            timeout = wd;
        if (zmq_poll(items, 3, timeout) < 0 && errno != EINTR) {
            r = om_log_errno(-errno, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN)
            om_daemon_on_signal(d);
        if (items[1].revents & ZMQ_POLLIN)
            s_on_input(&m, a);
        if (items[2].revents & ZMQ_POLLIN)
            s_on_clients(&m, a);
        om_daemon_tick(d, om_time_mono_ms());
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

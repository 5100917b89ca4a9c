/* tokenizer_svc: the tokenizer daemon, the pipeline's front door. Clients' DEALERs send ChatRequest,
 * Abort and heartbeats to its `tokenizer` ROUTER. Requests are tokenized by tok_service on a pool of
 * worker threads (inproc PUSH/PULL; the workers touch no external socket) and forwarded to mm_prep
 * through the `downstream` DEALER; failures go straight back to the client as a Status (stage
 * "tokenizer"). Aborts are forwarded to mm_prep. mm_prep's heartbeats are watched: while it is down,
 * new requests fail at once with UNAVAILABLE naming "mm_prep", and requests handed to it since its last
 * heartbeat fail the same way when it is declared dead. This file is the shell only. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "om_arena.h"
#include "om_config.h"
#include "om_daemon.h"
#include "om_log.h"
#include "om_msg.h"
#include "om_time.h"
#include "om_transport.h"
#include "tok_service.h"

#define TOK_WORK_EP "inproc://tok-work"
#define TOK_DONE_EP "inproc://tok-done"
#define TOK_RECENT_MAX 4096 /* requests remembered since mm_prep's last heartbeat */
#define TOK_ID_MAX 64

typedef struct tok_recent {
    uint8_t client_id[TOK_ID_MAX]; /* client routing identity */
    size_t client_id_len;          /* bytes */
    uint64_t request_id;
    uint64_t sent_ms; /* monotonic ms it was forwarded to mm_prep (recent list only) */
} tok_recent_t;

typedef struct tok_main {
    om_transport_t *t;
    om_sock_t *frontend;   /* ROUTER, bound: clients */
    om_sock_t *downstream; /* DEALER -> mm_prep */
    void *work;            /* inproc PUSH to workers (not recorded: internal) */
    void *done;            /* inproc PULL from workers */
    const tok_service_t *svc;
    uint64_t hb_ms, window_ms;
    uint64_t mmp_heard;    /* monotonic ms of mm_prep's last frame; 0 = never */
    bool mmp_dead;         /* declared dead (heard before, silent for a window) */
    tok_recent_t *recent;  /* forwarded since mm_prep's last heartbeat */
    size_t n_recent;
    tok_recent_t *busy;    /* handed to a worker, not back yet (an Abort may overtake them) */
    bool *busy_aborted;    /* per busy entry: the client aborted it meanwhile */
    size_t n_busy;
    uint64_t jobs_out, jobs_done;
    uint64_t n_dropped, n_malformed;
} tok_main_t;

typedef struct tok_worker {
    void *ctx;
    const tok_service_t *svc;
    pthread_t thread;
} tok_worker_t;

/* worker: [ident, envelope, now_ms(8)] -> [dest 'D'|'C', ident, envelope] */
static void *s_worker(void *arg) {
    tok_worker_t *w = arg;
    void *in = zmq_socket(w->ctx, ZMQ_PULL), *out = zmq_socket(w->ctx, ZMQ_PUSH);
    om_arena_t *a = NULL;
    if (!in || !out || zmq_connect(in, TOK_WORK_EP) < 0 || zmq_connect(out, TOK_DONE_EP) < 0 ||
        om_arena_new(0, &a) < 0)
        goto out;
    for (;;) {
        zmq_msg_t f[3];
        size_t n = 0;
        int more = 1;
        bool bad = false;
        while (more) {
            zmq_msg_t tmp, *dst = n < 3 ? &f[n] : &tmp;
            zmq_msg_init(dst);
            if (zmq_msg_recv(dst, in, 0) < 0) {
                zmq_msg_close(dst);
                for (size_t i = 0; i < n; i++)
                    zmq_msg_close(&f[i]);
                goto out; /* context terminated */
            }
            more = zmq_msg_more(dst);
            if (dst == &tmp) {
                zmq_msg_close(&tmp);
                bad = true;
            } else {
                n++;
            }
        }
        if (n == 3 && !bad && zmq_msg_size(&f[2]) == 8) {
            uint64_t now_ms;
            memcpy(&now_ms, zmq_msg_data(&f[2]), 8);
            Omnipipe__Envelope *env = NULL, *res = NULL;
            char dest = 'C';
            if (om_msg_unpack(a, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), &env) == 0 &&
                tok_service_handle(w->svc, env, now_ms, a, &res) == 0) {
                dest = res->body_case == OMNIPIPE__ENVELOPE__BODY_TOKENIZED ? 'D' : 'C';
            } else if (env) {
                res = om_msg_status_env(a, env->header, om_msg_status(a, -ENOMEM, OM_STAGE_TOKENIZER,
                                                                     "out of memory while tokenizing"));
            }
            uint8_t *buf;
            size_t len;
            if (res && om_msg_pack(a, res, &buf, &len) == 0) {
                zmq_send(out, &dest, 1, ZMQ_SNDMORE);
                zmq_send(out, zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), ZMQ_SNDMORE);
                zmq_send(out, buf, len, 0);
            } else {
                dest = 'X'; /* account for the job even when nothing can be said */
                zmq_send(out, &dest, 1, 0);
            }
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        om_arena_reset(a);
    }
out:
    om_arena_free(a);
    int zero = 0;
    if (in) {
        zmq_setsockopt(in, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(in);
    }
    if (out) {
        zmq_setsockopt(out, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(out);
    }
    return NULL;
}

static void s_reply_status(tok_main_t *m, om_arena_t *a, const uint8_t *ident, size_t ident_len,
                           uint64_t request_id, int err, const char *stage, const char *msg) {
    Omnipipe__Header *h = om_msg_header_new(a, request_id, ident, ident_len);
    Omnipipe__Envelope *env = om_msg_status_env(a, h, om_msg_status(a, err, stage, "%s", msg));
    if (!env || om_msg_send(m->frontend, a, ident, ident_len, env) < 0)
        m->n_dropped++;
}

static void s_remember(tok_main_t *m, const Omnipipe__Header *h) {
    if (m->n_recent == TOK_RECENT_MAX || !h->has_client_id || h->client_id.len > TOK_ID_MAX)
        return;
    tok_recent_t *r = &m->recent[m->n_recent++];
    memcpy(r->client_id, h->client_id.data, h->client_id.len);
    r->client_id_len = h->client_id.len;
    r->request_id = h->request_id;
    r->sent_ms = om_time_mono_ms();
}

/* mm_prep spoke: it was alive, but a heartbeat it sent before reading its queue can arrive after
   a request we forwarded just now; forget only the requests forwarded a heartbeat interval ago or
   earlier (its loop has polled its socket since), keep the newer ones until the next frame. */
static void s_recent_heard(tok_main_t *m) {
    uint64_t now = om_time_mono_ms();
    size_t k = 0;
    for (size_t i = 0; i < m->n_recent; i++)
        if (now - m->recent[i].sent_ms < m->hb_ms)
            m->recent[k++] = m->recent[i];
    m->n_recent = k;
}

static bool s_key_is(const tok_recent_t *k, const Omnipipe__Header *h) {
    return h->has_client_id && k->request_id == h->request_id && k->client_id_len == h->client_id.len &&
           memcmp(k->client_id, h->client_id.data, k->client_id_len) == 0;
}

static long s_busy_find(tok_main_t *m, const Omnipipe__Header *h) {
    for (size_t i = 0; i < m->n_busy; i++)
        if (s_key_is(&m->busy[i], h))
            return (long)i;
    return -1;
}

static void s_busy_add(tok_main_t *m, const Omnipipe__Header *h) {
    if (m->n_busy == TOK_RECENT_MAX || !h->has_client_id || h->client_id.len > TOK_ID_MAX)
        return;
    tok_recent_t *r = &m->busy[m->n_busy];
    memcpy(r->client_id, h->client_id.data, h->client_id.len);
    r->client_id_len = h->client_id.len;
    r->request_id = h->request_id;
    m->busy_aborted[m->n_busy] = false;
    m->n_busy++;
}

/* removes h from the busy set; true when it was aborted while a worker had it */
static bool s_busy_take(tok_main_t *m, const Omnipipe__Header *h) {
    long i = s_busy_find(m, h);
    if (i < 0)
        return false;
    bool aborted = m->busy_aborted[i];
    m->n_busy--;
    m->busy[i] = m->busy[m->n_busy];
    m->busy_aborted[i] = m->busy_aborted[m->n_busy];
    return aborted;
}

static void s_on_frontend(tok_main_t *m, om_arena_t *a, bool stopping) {
    om_msg_in_t in;
    while (om_msg_recv(m->frontend, a, true, &in) == 0) {
        if (!in.ident) {
            om_arena_reset(a);
            continue;
        }
        uint64_t rid = in.env && in.env->header ? in.env->header->request_id : 0;
        if (in.err < 0) {
            m->n_malformed++;
            om_log_warning("frontend: malformed frame from a client: %s", in.errmsg);
            s_reply_status(m, a, in.ident, in.ident_len, rid, -EPROTO, OM_STAGE_TOKENIZER, in.errmsg);
        } else if (om_msg_is_control(in.env) &&
                   in.env->control->kind_case == OMNIPIPE__CONTROL__KIND_STATS_REQUEST) {
            /* answered by mm_prep (engine loads), routed back to this client by s_on_downstream */
            in.env->header->has_client_id = true;
            in.env->header->client_id.data = (uint8_t *)in.ident;
            in.env->header->client_id.len = in.ident_len;
            if (om_msg_send(m->downstream, a, NULL, 0, in.env) < 0)
                m->n_dropped++;
        } else if (om_msg_is_control(in.env)) {
            Omnipipe__Envelope *hb = om_msg_heartbeat_env(a, OM_STAGE_TOKENIZER, (uint32_t)getpid(), NULL);
            if (!hb || om_msg_send(m->frontend, a, in.ident, in.ident_len, hb) < 0)
                m->n_dropped++;
        } else {
            /* the client is who the socket says it is */
            in.env->header->has_client_id = true;
            in.env->header->client_id.data = (uint8_t *)in.ident;
            in.env->header->client_id.len = in.ident_len;
            if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT) {
                long b = s_busy_find(m, in.env->header);
                if (b >= 0)
                    m->busy_aborted[b] = true; /* still in a worker: ended when it comes back */
                else if (om_msg_send(m->downstream, a, NULL, 0, in.env) < 0)
                    m->n_dropped++;
            } else if (stopping) {
                s_reply_status(m, a, in.ident, in.ident_len, rid, -EHOSTDOWN, OM_STAGE_TOKENIZER,
                               "the tokenizer is shutting down");
            } else if (m->mmp_dead) {
                s_reply_status(m, a, in.ident, in.ident_len, rid, -EHOSTDOWN, OM_STAGE_MM_PREP,
                               "mm_prep is not answering heartbeats");
            } else {
                om_msg_stamp(a, in.env->header, OM_STAGE_TOKENIZER, in.recv_mono_ns, 0, om_time_wall_us());
                uint8_t *buf;
                size_t len;
                if (om_msg_pack(a, in.env, &buf, &len) == 0) {
                    zmq_send(m->work, in.ident, in.ident_len, ZMQ_SNDMORE);
                    zmq_send(m->work, buf, len, ZMQ_SNDMORE);
                    zmq_send(m->work, &in.now_ms, 8, 0);
                    m->jobs_out++;
                    s_busy_add(m, in.env->header);
                }
            }
        }
        om_arena_reset(a);
    }
}

static void s_on_done(tok_main_t *m, om_arena_t *a) {
    for (;;) {
        zmq_msg_t f[3];
        size_t n = 0;
        int more = 1;
        while (more && n < 3) {
            zmq_msg_init(&f[n]);
            if (zmq_msg_recv(&f[n], m->done, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(&f[n]);
                for (size_t i = 0; i < n; i++)
                    zmq_msg_close(&f[i]);
                return;
            }
            more = zmq_msg_more(&f[n]);
            n++;
        }
        m->jobs_done++;
        if (n == 3) {
            char dest = *(char *)zmq_msg_data(&f[0]);
            const uint8_t *ident = zmq_msg_data(&f[1]);
            size_t ident_len = zmq_msg_size(&f[1]);
            om_frame_t out[2] = {{ident, ident_len}, {zmq_msg_data(&f[2]), zmq_msg_size(&f[2])}};
            Omnipipe__Envelope *env = NULL;
            om_msg_unpack(a, out[1].data, out[1].len, &env);
            bool aborted = env && s_busy_take(m, env->header);
            if (aborted) {
                s_reply_status(m, a, ident, ident_len, env->header->request_id, -ECANCELED,
                               OM_STAGE_TOKENIZER, "aborted by the client during tokenization");
            } else if (dest == 'D') {
                int r = om_sock_send(m->downstream, &out[1], 1);
                if (r == 0 && env) {
                    s_remember(m, env->header);
                } else if (env) {
                    s_reply_status(m, a, ident, ident_len, env->header->request_id, -EHOSTDOWN,
                                   OM_STAGE_MM_PREP,
                                   r == -EAGAIN ? "mm_prep is not connected or its queue is full"
                                                : "cannot send to mm_prep");
                }
            } else if (om_sock_send(m->frontend, out, 2) < 0) {
                m->n_dropped++;
            }
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        om_arena_reset(a);
    }
}

static void s_on_downstream(tok_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    while (om_msg_recv(m->downstream, a, false, &in) == 0) {
        m->mmp_heard = om_time_mono_ms();
        if (m->mmp_dead)
            om_log_notice("mm_prep is back");
        m->mmp_dead = false;
        if (in.err < 0) {
            m->n_malformed++;
        } else if (om_msg_is_control(in.env)) {
            s_recent_heard(m);
            if (in.env->control->kind_case == OMNIPIPE__CONTROL__KIND_STATS_REPLY &&
                in.env->header->has_client_id &&
                om_msg_send(m->frontend, a, in.env->header->client_id.data, in.env->header->client_id.len,
                            in.env) < 0)
                m->n_dropped++;
        } else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS && in.env->header->has_client_id) {
            if (om_msg_send(m->frontend, a, in.env->header->client_id.data, in.env->header->client_id.len,
                            in.env) < 0)
                m->n_dropped++;
        }
        om_arena_reset(a);
    }
}

static void s_timers(tok_main_t *m, om_arena_t *a, uint64_t *last_hb) {
    uint64_t now = om_time_mono_ms();
    if (now - *last_hb >= m->hb_ms) {
        Omnipipe__Envelope *hb = om_msg_heartbeat_env(a, OM_STAGE_TOKENIZER, (uint32_t)getpid(), NULL);
        if (hb)
            om_msg_send(m->downstream, a, NULL, 0, hb);
        om_arena_reset(a);
        *last_hb = now;
    }
    if (m->mmp_heard && !m->mmp_dead && now - m->mmp_heard > m->window_ms) {
        m->mmp_dead = true;
        om_log_warning("mm_prep silent for %" PRIu64 " ms, failing %zu recent requests",
                       now - m->mmp_heard, m->n_recent);
        for (size_t i = 0; i < m->n_recent; i++) {
            s_reply_status(m, a, m->recent[i].client_id, m->recent[i].client_id_len,
                           m->recent[i].request_id, -EHOSTDOWN, OM_STAGE_MM_PREP,
                           "mm_prep stopped answering heartbeats with this request in its queue");
            om_arena_reset(a);
        }
        m->n_recent = 0;
    }
}

static int run(int argc, char **argv) {
    static const om_config_key_t keys[] = {
        {"threads", false, "2", "tokenizer worker threads"},
        {"deadline_ms", false, "60000", "default request deadline, ms"},
        {NULL, false, NULL, NULL},
    };
    char err[512], ep_front[4096], ep_down[4096], note[4200];
    om_config_t *cfg = NULL;
    int r = om_daemon_config(OM_STAGE_TOKENIZER, "tokenizer_svc", keys, argc, argv, &cfg);
    if (r != 0)
        return r < 0 ? r : 0;
    tok_main_t m = {0};
    tok_service_t *svc = NULL;
    om_daemon_t *d = NULL;
    om_arena_t *a = NULL;
    tok_worker_t *workers = NULL;
    uint64_t n_threads = 2, deadline_ms = 60000, liveness = 4;
    m.hb_ms = 500;
    const char *model = om_config_get(cfg, "model");
    if (!model) {
        r = om_log_errno(-EINVAL, "--model DIR is required (tokenizer.json, chat template)");
        goto out;
    }
    if ((r = om_config_get_u64(cfg, "threads", &n_threads, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "deadline_ms", &deadline_ms, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "heartbeat_ms", &m.hb_ms, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "liveness", &liveness, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        goto out;
    }
    if (n_threads < 1 || n_threads > 256 || m.hb_ms == 0) {
        r = om_log_errno(-EINVAL, "--threads must be 1..256 and --heartbeat-ms > 0");
        goto out;
    }
    m.window_ms = m.hb_ms * (liveness ? liveness : 4);
    m.recent = calloc(TOK_RECENT_MAX, sizeof *m.recent);
    m.busy = calloc(TOK_RECENT_MAX, sizeof *m.busy);
    m.busy_aborted = calloc(TOK_RECENT_MAX, sizeof *m.busy_aborted);
    if (!m.recent || !m.busy || !m.busy_aborted || (r = om_daemon_new("tokenizer", &d)) < 0 || (r = om_arena_new(0, &a)) < 0) {
        r = r < 0 ? r : -ENOMEM;
        om_log_err("cannot set up: %s", strerror(-r));
        goto out;
    }
    if ((r = tok_service_new(model, deadline_ms, &svc, err, sizeof err)) < 0) {
        om_log_err("cannot load the tokenizer of '%s': %s", model, err);
        goto out;
    }
    m.svc = svc;
    {
        char kv_model[4200], kv_dl[64];
        snprintf(kv_model, sizeof kv_model, "model=%s", model);
        snprintf(kv_dl, sizeof kv_dl, "deadline_ms=%" PRIu64, deadline_ms);
        const char *kv[] = {kv_model, kv_dl};
        if ((r = om_daemon_transport(cfg, OM_STAGE_TOKENIZER, kv, 2, &m.t)) < 0)
            goto out;
    }
    if ((r = om_config_endpoint(cfg, "tokenizer", ep_front, sizeof ep_front)) < 0 ||
        (r = om_config_endpoint(cfg, "mm_prep", ep_down, sizeof ep_down)) < 0) {
        om_log_err("cannot resolve endpoints: %s", strerror(-r));
        goto out;
    }
    void *ctx = om_transport_zmq_ctx(m.t);
    m.work = zmq_socket(ctx, ZMQ_PUSH);
    m.done = zmq_socket(ctx, ZMQ_PULL);
    if (!m.work || !m.done || zmq_bind(m.work, TOK_WORK_EP) < 0 || zmq_bind(m.done, TOK_DONE_EP) < 0) {
        r = om_log_errno(-errno, "cannot create the worker sockets: %s", zmq_strerror(errno));
        goto out;
    }
    if ((r = om_sock_new(m.t, ZMQ_ROUTER, "frontend", NULL, &m.frontend)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_DEALER, "downstream", NULL, &m.downstream)) < 0) {
        om_log_err("cannot create sockets: %s", strerror(-r));
        goto out;
    }
    if ((r = om_sock_bind(m.frontend, ep_front)) < 0) {
        om_log_err("cannot bind '%s': %s", ep_front, zmq_strerror(-r));
        goto out;
    }
    if ((r = om_sock_connect(m.downstream, ep_down)) < 0) {
        om_log_err("cannot connect '%s': %s", ep_down, zmq_strerror(-r));
        goto out;
    }
    workers = calloc(n_threads, sizeof *workers);
    if (!workers) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n_threads; i++) {
        workers[i].ctx = ctx;
        workers[i].svc = svc;
        if (pthread_create(&workers[i].thread, NULL, s_worker, &workers[i]) != 0) {
            r = om_log_errno(-EAGAIN, "cannot start worker thread %zu", i);
            n_threads = i;
            goto out;
        }
    }
    om_daemon_ready(d, "serving on %s with %" PRIu64 " workers", ep_front, n_threads);
    om_log_notice("ready: %s -> %s, %" PRIu64 " workers%s", ep_front, ep_down, n_threads,
                  om_daemon_recording_note(m.t, note, sizeof note));
    uint64_t last_hb = 0, stop_at = 0;
    for (;;) {
        bool stopping = om_daemon_stopping(d);
        if (stopping && !stop_at)
            stop_at = om_time_mono_ms();
        /* drain: finish the jobs already handed to workers, for at most 5 s */
        if (stopping && (m.jobs_done >= m.jobs_out || om_time_mono_ms() - stop_at > 5000))
            break;
        zmq_pollitem_t items[4] = {
            {0},
            {om_sock_zmq(m.frontend), 0, ZMQ_POLLIN, 0},
            {m.done, 0, ZMQ_POLLIN, 0},
            {om_sock_zmq(m.downstream), 0, ZMQ_POLLIN, 0},
        };
        if ((r = om_daemon_poll(d, items, 4, (long)m.hb_ms / 2)) < 0)
            break;
        if (items[3].revents & ZMQ_POLLIN)
            s_on_downstream(&m, a);
        if (items[1].revents & ZMQ_POLLIN)
            s_on_frontend(&m, a, stopping);
        if (items[2].revents & ZMQ_POLLIN)
            s_on_done(&m, a);
        s_timers(&m, a, &last_hb);
        om_daemon_tick(d, om_time_mono_ms());
    }
    om_log_notice("stopping: %" PRIu64 " requests tokenized, %" PRIu64 " dropped, %" PRIu64 " malformed",
                  m.jobs_done, m.n_dropped, m.n_malformed);
out:;
    int zero = 0;
    if (m.work) {
        zmq_setsockopt(m.work, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(m.work);
    }
    if (m.done) {
        zmq_setsockopt(m.done, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(m.done);
    }
    om_sock_free(m.frontend);
    om_sock_free(m.downstream);
    /* terminating the context wakes the workers (their recv fails with ETERM) */
    om_transport_free(m.t);
    for (size_t i = 0; workers && i < n_threads; i++)
        pthread_join(workers[i].thread, NULL);
    free(workers);
    tok_service_free(svc);
    free(m.recent);
    free(m.busy);
    free(m.busy_aborted);
    om_arena_free(a);
    om_daemon_free(d);
    om_config_free(cfg);
    return r < 0 ? r : 0;
}

int main(int argc, char **argv) { return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS; }

/* engine_svc: one engine daemon (one per GPU, or CPU). Connects a DEALER to mm_prep's `engines`
 * ROUTER (PreparedRequest and Abort in; heartbeats with EngineLoad credits and the keys of finished
 * requests out) and a PUSH to the decoder's `decoder_in` (one TokenBatch per engine step). The loop
 * polls with timeout 0 while eng_service has work, else the heartbeat interval; every step is
 * recorded as a TICK with its now_ms, so `omnipipe replay --stage engine` reproduces step
 * boundaries. On SIGTERM it stops taking requests, finishes the running ones (at most --drain-ms),
 * fails the rest, tells mm_prep it is leaving (Control.disconnect) and exits. A failing step (sticky
 * device error) ends the process so systemd restarts it. This file is the shell only. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_devices.h"
#include "eng_service.h"
#ifdef OM_HAVE_CUDA
#include "eng_cuda.h"
#endif
#include "om_arena.h"
#include "om_config.h"
#include "om_daemon.h"
#include "om_log.h"
#include "om_msg.h"
#include "om_time.h"
#include "om_transport.h"

#define ENG_DONE_MAX 1024 /* finished keys per heartbeat */

typedef struct eng_main {
    om_transport_t *t;
    om_sock_t *mmp;     /* DEALER -> mm_prep engines ROUTER */
    om_sock_t *decoder; /* PUSH -> decoder_in */
    eng_service_t *svc;
    om_daemon_t *d;
    om_arena_t *hb;     /* heartbeat scratch */
    Omnipipe__RequestKey done[ENG_DONE_MAX]; /* finished since the last heartbeat */
    Omnipipe__RequestKey *done_ptr[ENG_DONE_MAX];
    uint8_t done_ids[ENG_DONE_MAX][64];
    size_t n_done;
    uint64_t last_pct;
    uint64_t load_t0_ms; /* monotonic start of the weight load, for progress reports */
    uint64_t n_dropped, n_malformed;
} eng_main_t;

static void s_progress(void *ud, uint64_t bytes_done, uint64_t bytes_total, uint32_t tensors_done,
                       uint32_t tensors_total) {
    eng_main_t *m = ud;
    om_daemon_tick(m->d, om_time_mono_ms()); /* a long load is progress, not a hang */
    uint64_t pct = bytes_total ? bytes_done * 100 / bytes_total : 0;
    if (pct / 5 == m->last_pct / 5 && bytes_done != bytes_total)
        return;
    m->last_pct = pct;
    double elapsed_s = (double)(om_time_mono_ms() - m->load_t0_ms) / 1000.0;
    double gb_done = (double)bytes_done / 1e9, gb_total = (double)bytes_total / 1e9;
    om_daemon_status(m->d, "loading weights %" PRIu64 "%%: %.2f/%.2f GB, %u/%u tensors, %.1f s", pct,
                     gb_done, gb_total, tensors_done, tensors_total, elapsed_s);
    om_log_info("loading weights %" PRIu64 "%%: %.2f/%.2f GB, %u/%u tensors, %.1f s (%.2f GB/s)", pct,
                gb_done, gb_total, tensors_done, tensors_total, elapsed_s,
                elapsed_s > 0 ? gb_done / elapsed_s : 0.0);
    om_daemon_extend_timeout(m->d, 60ull * 1000000ull);
}

static void s_add_done(eng_main_t *m, const uint8_t *cid, size_t len, uint64_t rid) {
    if (m->n_done == ENG_DONE_MAX || len > 64)
        return;
    Omnipipe__RequestKey *k = &m->done[m->n_done];
    omnipipe__request_key__init(k);
    memcpy(m->done_ids[m->n_done], cid, len);
    k->has_client_id = k->has_request_id = true;
    k->client_id.data = m->done_ids[m->n_done];
    k->client_id.len = len;
    k->request_id = rid;
    m->done_ptr[m->n_done] = k;
    m->n_done++;
}

static void s_heartbeat(eng_main_t *m, bool disconnect) {
    om_arena_reset(m->hb);
    Omnipipe__EngineLoad load = OMNIPIPE__ENGINE_LOAD__INIT;
    eng_service_load(m->svc, &load);
    if (om_daemon_stopping(m->d)) {
        load.has_credits = true;
        load.credits = 0; /* draining: take nothing new */
    }
    Omnipipe__Envelope *env = om_msg_heartbeat_env(m->hb, OM_STAGE_ENGINE, (uint32_t)getpid(), &load);
    if (!env)
        return;
    if (disconnect) {
        env->control->kind_case = OMNIPIPE__CONTROL__KIND_DISCONNECT;
        env->control->disconnect = true;
    } else {
        env->control->heartbeat->done = m->done_ptr;
        env->control->heartbeat->n_done = m->n_done;
    }
    if (om_msg_send(m->mmp, m->hb, NULL, 0, env) == 0)
        m->n_done = 0;
}

/* a request the service refused outright: tell the client through the decoder */
static void s_refuse(eng_main_t *m, om_arena_t *a, Omnipipe__Header *h, int err, const char *msg) {
    Omnipipe__Envelope *env = om_msg_status_env(a, h, om_msg_status(a, err, OM_STAGE_ENGINE, "%s", msg));
    if (!env || om_msg_send(m->decoder, a, NULL, 0, env) < 0)
        m->n_dropped++;
    if (h->has_client_id)
        s_add_done(m, h->client_id.data, h->client_id.len, h->request_id);
}

static bool s_on_mmp(eng_main_t *m, om_arena_t *a) {
    om_msg_in_t in;
    bool got = false;
    while (om_msg_recv(m->mmp, a, false, &in) == 0) {
        got = true;
        if (in.err < 0) {
            m->n_malformed++;
            om_log_warning("mm_prep: malformed frame: %s, dropping", in.errmsg);
        } else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_PREPARED) {
            Omnipipe__Header *h = in.env->header;
            if (om_daemon_stopping(m->d)) {
                s_refuse(m, a, h, -EHOSTDOWN, "engine is shutting down");
            } else {
                om_msg_stamp(a, h, OM_STAGE_ENGINE, in.recv_mono_ns, 0, om_time_wall_us());
                int r = eng_service_submit(m->svc, h, in.env->prepared, in.now_ms);
                if (r < 0)
                    s_refuse(m, a, h, r, r == -EINVAL ? "invalid request" : strerror(-r));
            }
        } else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT) {
            const Omnipipe__Header *h = in.env->header;
            if (h->has_client_id)
                eng_service_abort(m->svc, h->client_id.data, h->client_id.len, h->request_id);
        }
        om_arena_reset(a);
    }
    return got;
}

/* Whether a failed step left the device unusable (sticky CUDA error: the context is poisoned and
 * only a new process recovers; -EHOSTDOWN: a tensor-parallel group aborted its NCCL
 * communicators after a rank's failure or its watchdog, which also sets the sticky error). */
static bool s_device_lost(int r) {
#ifdef OM_HAVE_CUDA
    return (r == -EIO || r == -EHOSTDOWN) && eng_cuda_error_is_sticky();
#else
    (void)r;
    return false;
#endif
}

/* One engine step; a failed step's batch (its requests ended with the error) is still sent. */
static int s_step(eng_main_t *m, om_arena_t *a) {
    uint64_t now = om_time_wall_ms();
    om_transport_tick(m->t, "step", now);
    const Omnipipe__TokenBatch *b = NULL;
    int rs = eng_service_step(m->svc, now, &b);
    if (!b || b->n_seqs == 0)
        return rs;
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = om_msg_header_new(a, 0, NULL, 0);
    env.body_case = OMNIPIPE__ENVELOPE__BODY_BATCH;
    env.batch = (Omnipipe__TokenBatch *)b;
    if (!env.header || om_msg_send(m->decoder, a, NULL, 0, &env) < 0)
        m->n_dropped++;
    bool finished = false;
    for (size_t i = 0; i < b->n_seqs; i++) {
        const Omnipipe__SeqStep *q = b->seqs[i];
        if (q->has_finish && q->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE) {
            s_add_done(m, q->client_id.data, q->client_id.len, q->request_id);
            finished = true;
        }
    }
    om_arena_reset(a);
    if (finished)
        s_heartbeat(m, false); /* fresh credits and done keys for the router at once */
    return rs;
}

static int run(int argc, char **argv) {
    static const om_config_key_t keys[] = {
        {"backend", false, "cpu", "cpu|cuda"},
        /* device and tensor_parallel have no stored default: whether they were set matters
           next to devices (eng_devices_resolve) */
        {"device", false, NULL,
         "CUDA device index (default 0; with tensor_parallel N: the first of N)"},
        {"devices", false, NULL,
         "cuda: the GPUs this engine uses, e.g. 2,3 (rank i on the i-th; tensor_parallel defaults "
         "to the list's length; replaces device)"},
        {"tensor_parallel", false, NULL,
         "cuda: split the model over N GPUs (default 1, or the length of devices): devices, else "
         "device .. device+N-1; NCCL, one thread per GPU"},
        {"tp_watchdog_ms", false, "20000",
         "tensor_parallel > 1: a step running longer aborts the group and ends the engine (0 = "
         "off; keep it under the unit's WatchdogSec)"},
        {"moe_parallel", false, "expert",
         "with tensor_parallel > 1: expert (E/N whole experts per GPU) | column (every expert's "
         "columns split)"},
        {"load_format", false, "auto", "auto (safetensors) | dummy (random weights)"},
        {"engine_id", false, NULL, "name in TokenBatch and routing (default engine-<pid>)"},
        {"kv_blocks", false, "0", "KV cache blocks (0 = sized automatically)"},
        {"max_batch_tokens", false, "0", "token budget per step (0 = default)"},
        {"kv_fraction", false, "0.9", "cuda: fraction of free device memory for KV after weights"},
        {"max_running", false, "0", "max concurrent sequences (0 = default: 64 cpu, 256 cuda)"},
        {"no_prefix_cache", true, NULL, "disable prefix caching"},
        {"threads", false, "0", "CPU backend threads (0 = all cores)"},
        {"drain_ms", false, "10000", "on SIGTERM, time to finish running requests"},
        {NULL, false, NULL, NULL},
    };
    char err[512], ep_eng[4096], ep_dec[4096], engine_id[128], note[4200];
    om_config_t *cfg = NULL;
    int r = om_daemon_config(OM_STAGE_ENGINE, "engine_svc", keys, argc, argv, &cfg);
    if (r != 0)
        return r < 0 ? r : 0;
    eng_main_t m = {0};
    om_arena_t *a = NULL;
    uint64_t hb_ms = 500, device = 0, kv_blocks = 0, mbt = 0, threads = 0, drain_ms = 10000;
    uint64_t max_running = 0, tensor_parallel = 1, tp_watchdog_ms = 20000;
    double kv_fraction = 0.9;
    const char *model = om_config_get(cfg, "model");
    if (!model) {
        r = om_log_errno(-EINVAL, "--model DIR is required");
        goto out;
    }
    if ((r = om_config_get_u64(cfg, "heartbeat_ms", &hb_ms, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "kv_blocks", &kv_blocks, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "max_batch_tokens", &mbt, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "max_running", &max_running, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "threads", &threads, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "drain_ms", &drain_ms, err, sizeof err)) < 0 ||
        (r = om_config_get_u64(cfg, "tp_watchdog_ms", &tp_watchdog_ms, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        goto out;
    }
    if (tp_watchdog_ms > 86400000) {
        r = om_log_errno(-EINVAL, "tp_watchdog_ms: %" PRIu64 " is over a day (86400000); 0 turns "
                         "the watchdog off", tp_watchdog_ms);
        goto out;
    }
    { /* eng_model reads the MoE split from OMNIPIPE_MOE_PARALLEL (eng_model_load_opts_t) */
        const char *mp = om_config_get(cfg, "moe_parallel");
        if (mp && strcmp(mp, "expert") != 0 && strcmp(mp, "column") != 0) {
            r = om_log_errno(-EINVAL, "moe_parallel: must be expert or column, got '%s'", mp);
            goto out;
        }
        if (mp && setenv("OMNIPIPE_MOE_PARALLEL", mp, 1) != 0) {
            r = om_log_errno(-errno, "setenv OMNIPIPE_MOE_PARALLEL: %s", strerror(errno));
            goto out;
        }
    }
    { /* the GPUs: devices, else device .. device+tensor_parallel-1 (eng_devices.h) */
        int devs[ENG_DEVICES_MAX], n_devs = 0;
        if ((r = eng_devices_resolve(om_config_get(cfg, "devices"), om_config_get(cfg, "device"),
                                     om_config_get(cfg, "tensor_parallel"), devs, &n_devs, err,
                                     sizeof err)) < 0) {
            om_log_err("%s", err);
            goto out;
        }
        const char *be = om_config_get(cfg, "backend");
#ifdef OM_HAVE_CUDA
        if (be && strcmp(be, "cuda") == 0) { /* every GPU must exist, named by its field */
            int have = eng_cuda_device_count();
            for (int i = 0; i < n_devs; i++)
                if (devs[i] >= have) {
                    if (om_config_get(cfg, "devices"))
                        r = om_log_errno(-ENODEV, "devices[%d]: GPU %d does not exist (%d CUDA "
                                         "device%s visible)", i, devs[i], have, have == 1 ? "" : "s");
                    else
                        r = om_log_errno(-ENODEV, "%s: GPU %d does not exist (%d CUDA device%s "
                                         "visible)", i ? "tensor_parallel" : "device", devs[i],
                                         have, have == 1 ? "" : "s");
                    goto out;
                }
        }
#endif
        (void)be;
        device = (uint64_t)devs[0];
        tensor_parallel = (uint64_t)n_devs;
        /* eng_model reads the degree and the GPUs from OMNIPIPE_TENSOR_PARALLEL and
           OMNIPIPE_DEVICES (eng_model_load_opts_t), the group its watchdog from
           OMNIPIPE_TP_WATCHDOG_MS */
        char tpv[24], dl[ENG_DEVICES_MAX * 6], wd[24];
        snprintf(tpv, sizeof tpv, "%" PRIu64, tensor_parallel);
        snprintf(wd, sizeof wd, "%" PRIu64, tp_watchdog_ms);
        if (eng_devices_format(devs, n_devs, dl, sizeof dl) < 0 ||
            setenv("OMNIPIPE_TENSOR_PARALLEL", tpv, 1) != 0 ||
            setenv("OMNIPIPE_DEVICES", dl, 1) != 0 ||
            setenv("OMNIPIPE_TP_WATCHDOG_MS", wd, 1) != 0) {
            r = om_log_errno(-EINVAL, "setenv OMNIPIPE_TENSOR_PARALLEL / OMNIPIPE_DEVICES / "
                             "OMNIPIPE_TP_WATCHDOG_MS: %s", strerror(errno));
            goto out;
        }
        if (n_devs > 1 || om_config_get(cfg, "devices"))
            om_log_info("GPUs: %s (tensor_parallel %d, watchdog %" PRIu64 " ms)", dl, n_devs,
                        tp_watchdog_ms);
    }
    {
        const char *f = om_config_get(cfg, "kv_fraction");
        char *end = NULL;
        if (f) {
            kv_fraction = strtod(f, &end);
            if (end == f || *end || !(kv_fraction > 0.0 && kv_fraction <= 1.0)) {
                r = om_log_errno(-EINVAL, "kv_fraction: must be in (0, 1], got '%s'", f);
                goto out;
            }
        }
    }
    if (om_config_get(cfg, "engine_id"))
        snprintf(engine_id, sizeof engine_id, "%s", om_config_get(cfg, "engine_id"));
    else
        snprintf(engine_id, sizeof engine_id, "engine-%d", (int)getpid());
    if ((r = om_daemon_new("engine", &m.d)) < 0 || (r = om_arena_new(0, &a)) < 0 ||
        (r = om_arena_new(0, &m.hb)) < 0) {
        om_log_err("cannot set up: %s", strerror(-r));
        goto out;
    }
    eng_service_opts_t eo = {
        .model_dir = model,
        .backend = om_config_get(cfg, "backend"),
        .device = (int)device,
        .load_format = om_config_get(cfg, "load_format"),
        .engine_id = engine_id,
        .max_batch_tokens = (uint32_t)mbt,
        .kv_blocks = kv_blocks,
        .kv_fraction = kv_fraction,
        .max_running = (uint32_t)max_running,
        .no_prefix_cache = om_config_get_bool(cfg, "no_prefix_cache"),
        .n_threads = (int)threads,
    };
    om_daemon_status(m.d, "loading %s", model);
    m.load_t0_ms = om_time_mono_ms();
    if ((r = eng_service_new(&eo, s_progress, &m, &m.svc, err, sizeof err)) < 0) {
        om_log_err("cannot load '%s' on %s: %s", model, eo.backend, err);
        goto out;
    }
    {
        char kv[8][4200];
        snprintf(kv[0], sizeof kv[0], "model=%s", model);
        snprintf(kv[1], sizeof kv[1], "backend=%s", eo.backend);
        snprintf(kv[2], sizeof kv[2], "device=%d", eo.device);
        snprintf(kv[3], sizeof kv[3], "load_format=%s", eo.load_format);
        snprintf(kv[4], sizeof kv[4], "engine_id=%s", engine_id);
        snprintf(kv[5], sizeof kv[5], "kv_blocks=%" PRIu64, kv_blocks);
        snprintf(kv[6], sizeof kv[6], "max_batch_tokens=%" PRIu64, mbt);
        snprintf(kv[7], sizeof kv[7], "threads=%" PRIu64, threads);
        const char *kvp[8];
        for (int i = 0; i < 8; i++)
            kvp[i] = kv[i];
        if ((r = om_daemon_transport(cfg, OM_STAGE_ENGINE, kvp, 8, &m.t)) < 0)
            goto out;
    }
    if ((r = om_config_endpoint(cfg, "engines", ep_eng, sizeof ep_eng)) < 0 ||
        (r = om_config_endpoint(cfg, "decoder_in", ep_dec, sizeof ep_dec)) < 0) {
        om_log_err("cannot resolve endpoints: %s", strerror(-r));
        goto out;
    }
    /* ZMQ_IMMEDIATE off: heartbeats wait for mm_prep's connection, and batches for a restarting
     * decoder queue (up to the high-water mark) instead of being lost in the reconnect gap */
    om_sock_opts_t mo = {.no_immediate = true};
    if ((r = om_sock_new(m.t, ZMQ_DEALER, "mm_prep", &mo, &m.mmp)) < 0 ||
        (r = om_sock_new(m.t, ZMQ_PUSH, "decoder", &mo, &m.decoder)) < 0) {
        om_log_err("cannot create sockets: %s", strerror(-r));
        goto out;
    }
    if ((r = om_sock_connect(m.mmp, ep_eng)) < 0 || (r = om_sock_connect(m.decoder, ep_dec)) < 0) {
        om_log_err("cannot connect '%s' / '%s': %s", ep_eng, ep_dec, zmq_strerror(-r));
        goto out;
    }
    s_heartbeat(&m, false);
    om_daemon_ready(m.d, "%s serving %s on %s", engine_id, model, eo.backend);
    om_log_notice("ready: %s (%s) -> %s%s", engine_id, eo.backend, ep_dec,
                  om_daemon_recording_note(m.t, note, sizeof note));
    uint64_t last_hb = om_time_mono_ms(), stop_at = 0;
    for (;;) {
        bool stopping = om_daemon_stopping(m.d);
        uint64_t now = om_time_mono_ms();
        if (stopping && !stop_at) {
            stop_at = now;
            s_heartbeat(&m, false); /* credits 0 */
        }
        if (stopping && !eng_service_has_work(m.svc))
            break;
        if (stopping && now - stop_at > drain_ms) {
            om_transport_tick(m.t, "fail_all", om_time_wall_ms());
            eng_service_fail_all(m.svc, -EHOSTDOWN, "engine shut down before the request finished");
            s_step(&m, a);
            break;
        }
        bool busy = eng_service_has_work(m.svc);
        zmq_pollitem_t items[2] = {
            {0},
            {om_sock_zmq(m.mmp), 0, ZMQ_POLLIN, 0},
        };
        if ((r = om_daemon_poll(m.d, items, 2, busy ? 0 : (long)hb_ms / 2)) < 0)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            s_on_mmp(&m, a);
        if (eng_service_has_work(m.svc) && (r = s_step(&m, a)) < 0) {
            if (!s_device_lost(r)) { /* the step's requests got the error; the engine goes on */
                om_log_warning("engine step failed: %s (its requests were ended with the error)",
                               strerror(-r));
                r = 0;
                goto next;
            }
#ifdef OM_HAVE_CUDA
            om_log(OM_LOG_CRIT, "CUDA context lost (%s): failing all requests and exiting so the "
                   "service manager restarts a clean engine", eng_cuda_last_error());
#endif
            om_daemon_status(m.d, "device lost: %s; restarting", strerror(-r));
            /* UNAVAILABLE (retryable): the requests did nothing wrong and the engine restarts */
            eng_service_fail_all(m.svc, -EHOSTDOWN,
                                 r == -EHOSTDOWN
                                     ? "engine device failed (tensor-parallel group aborted); "
                                       "restarting"
                                     : "engine device failed (sticky CUDA error); restarting");
            for (int i = 0; i < 4 && eng_service_has_work(m.svc); i++)
                s_step(&m, a); /* reports the failed requests; no model step runs */
            r = -EIO;
            break;
        }
    next:
        now = om_time_mono_ms();
        if (now - last_hb >= hb_ms) {
            s_heartbeat(&m, false);
            last_hb = now;
        }
        om_daemon_tick(m.d, now);
    }
    s_heartbeat(&m, true);
    om_log_notice("stopping: %" PRIu64 " batches dropped, %" PRIu64 " malformed frames", m.n_dropped,
                  m.n_malformed);
out:
    om_sock_free(m.mmp);
    om_sock_free(m.decoder);
    om_transport_free(m.t);
    eng_service_free(m.svc);
    om_arena_free(m.hb);
    om_arena_free(a);
    om_daemon_free(m.d);
    om_config_free(cfg);
    return r < 0 ? r : 0;
}

int main(int argc, char **argv) { return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS; }

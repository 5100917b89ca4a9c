/* eng_cuda_tp.cu: the tensor-parallel group behind a facade eng_cuda_model_t (eng_cuda_tp.h):
 * N shard runners, one host thread per GPU, one NCCL communicator per GPU.
 *
 * Threads: rank 0 runs on the caller's thread (it keeps device opts.device current there, so the
 * caller's own CUDA work — eng_model's sampling on the returned logits — lands on rank 0's GPU);
 * ranks 1..N-1 each own a worker thread that sets its device once and waits for jobs. s_all()
 * hands one job (a closure over the same arguments: the step's eng_batch_t, reserve sizes, ...) to
 * every rank, runs rank 0's part inline and waits for the others (a generation counter under a
 * mutex + two condition variables). All ranks therefore issue the same NCCL collectives in the
 * same order; decode steps are replayed from per-bucket CUDA graphs that each rank captures on
 * its own thread at the same step (capture mode thread-local), all-reduce kernels included (the
 * one-shot kernel of eng_cuda_ar.h, or NCCL's for large steps / without peer access).
 *
 * No hang on a rank's failure (eng_tp_watch.h): a forward issues each rank's step without the
 * final stream sync (eng_cuda_model_set_tp_async) and then waits for the stream with a bounded
 * poll (cudaStreamQuery, ncclCommGetAsyncError) under a watchdog (OMNIPIPE_TP_WATCHDOG_MS,
 * default 20000; 0 = none). A rank's error, an async NCCL error or the watchdog aborts every
 * rank's communicator (ncclCommAbort: the peers' waiting NCCL kernels return; the abort word
 * releases waiting one-shot all-reduce kernels first), marks the group
 * dead for good, sets the process's sticky CUDA error and returns -EHOSTDOWN naming the rank and
 * the reason; engine_svc then fails its requests as UNAVAILABLE (retryable) and exits so the
 * service manager restarts it. OM_CUDA_TP_WAIT=sync restores the old unbounded
 * cudaStreamSynchronize (A/B). Test hook: OM_CUDA_TP_FAULT=rank:step[:error|hang] makes rank
 * `rank` fail (error: return -EIO without issuing its step) or hang (block without issuing until
 * its communicator is aborted) at forward number `step` (0 = the first). */
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <chrono>
#include <cstdlib>

#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "eng_cuda_ar.h"
#include "eng_cuda_tp.h"
#include "eng_nccl.h"
#include "eng_tp_watch.h"

extern bool eng_cuda_sticky; /* eng_cuda_kern.cu */

enum { FAULT_ERROR = 0, FAULT_HANG = 1 };

struct eng_cuda_tp {
    int n;                                /* ranks = GPUs */
    std::vector<int> dev;                 /* (n) CUDA device of each rank */
    std::vector<void *> comm;             /* (n) ncclComm_t */
    std::vector<eng_cuda_model_t *> sh;   /* (n) shard runners */
    std::vector<std::thread> th;          /* (n) workers; th[0] unused (rank 0 = caller) */
    std::mutex mu;
    std::condition_variable go, done;
    uint64_t gen = 0;                     /* job generation */
    int pending = 0;                      /* workers still running the current job */
    bool quit = false;
    std::function<int(int, char *, size_t)> job;
    std::vector<int> rc;                  /* (n) last job's result per rank */
    std::vector<std::string> msg;         /* (n) last job's error per rank */
    eng_cuda_model_info_t info;
    /* failure handling (eng_tp_watch.h) */
    eng_tp_watch_t *watch = nullptr;      /* NULL with OM_CUDA_TP_WAIT=sync */
    uint64_t watchdog_ms = 20000;         /* OMNIPIPE_TP_WATCHDOG_MS; 0 = no deadline */
    uint64_t grace_ms = 2000;             /* a rank still issuing this long after a trip: abort */
    uint64_t spin_us = 20000;             /* wait: spin (yield) this long, as cudaStreamSynchronize
                                             does, then sleeps of up to 200 us (long prefills) */
    bool wedged = false;                  /* a worker never came back: no more jobs, leak at free */
    uint64_t n_fwd = 0;                   /* forwards started */
    int fault_rank = -1;                  /* OM_CUDA_TP_FAULT */
    uint64_t fault_step = 0;
    int fault_kind = FAULT_ERROR;
    /* one-shot all-reduce over peer memory (eng_cuda_ar.h): per-rank state, empty when off */
    std::vector<ek_ar> ar;
    int *abort_word = nullptr;            /* host-mapped; set by the abort callback */
};

/* Runs a job, turning an escaping C++ exception into an error. */
static int s_call(const std::function<int(int, char *, size_t)> &job, int rank, char *err,
                  size_t errlen) {
    try {
        return job(rank, err, errlen);
    } catch (const std::exception &ex) {
        snprintf(err, errlen, "exception: %s", ex.what());
    } catch (...) {
        snprintf(err, errlen, "unknown exception");
    }
    return -EIO;
}

static void s_worker(eng_cuda_tp *g, int rank) {
    cudaSetDevice(g->dev[rank]);
    uint64_t seen = 0;
    for (;;) {
        std::function<int(int, char *, size_t)> job;
        {
            std::unique_lock<std::mutex> lk(g->mu);
            g->go.wait(lk, [&] { return g->quit || g->gen != seen; });
            if (g->quit)
                return;
            seen = g->gen;
            job = g->job;
        }
        char err[512] = "";
        int r = s_call(job, rank, err, sizeof err);
        std::lock_guard<std::mutex> lk(g->mu);
        g->rc[rank] = r;
        g->msg[rank] = err;
        if (--g->pending == 0)
            g->done.notify_all();
    }
}

/* Runs job(rank) on every rank at once; the first failure in rank order goes to err. bound_ms > 0:
 * the workers must be back within bound_ms after rank 0's part, else the group is wedged (a
 * worker stuck for good: nothing more runs on it) and -EHOSTDOWN names the first missing rank. */
static int s_all(eng_cuda_tp *g, std::function<int(int, char *, size_t)> job, char *err,
                 size_t errlen, uint64_t bound_ms = 0) {
    if (g->wedged) {
        if (err && errlen)
            snprintf(err, errlen, "tensor-parallel group wedged: a rank thread never returned");
        return -EHOSTDOWN;
    }
    {
        std::lock_guard<std::mutex> lk(g->mu);
        g->job = job;
        g->pending = g->n - 1;
        for (int i = 0; i < g->n; i++) {
            g->rc[i] = 1; /* 1: not back yet */
            g->msg[i].clear();
        }
        g->gen++;
    }
    g->go.notify_all();
    cudaSetDevice(g->dev[0]);
    char e0[512] = "";
    int r0 = s_call(job, 0, e0, sizeof e0);
    std::unique_lock<std::mutex> lk(g->mu);
    if (bound_ms == 0) {
        g->done.wait(lk, [&] { return g->pending == 0; });
    } else if (!g->done.wait_for(lk, std::chrono::milliseconds(bound_ms),
                                 [&] { return g->pending == 0; })) {
        g->wedged = true;
        for (int i = 1; i < g->n; i++)
            if (g->rc[i] == 1) {
                if (err && errlen)
                    snprintf(err, errlen, "rank %d (GPU %d): its thread did not return within "
                             "%llu ms", i, g->dev[i], (unsigned long long)bound_ms);
                break;
            }
        return -EHOSTDOWN;
    }
    g->rc[0] = r0;
    g->msg[0] = e0;
    for (int i = 0; i < g->n; i++)
        if (g->rc[i] < 0) {
            if (err && errlen)
                snprintf(err, errlen, "rank %d (GPU %d): %s", i, g->dev[i], g->msg[i].c_str());
            return g->rc[i];
        }
    return 0;
}

/* eng_tp_watch abort callback: ncclCommAbort on rank's communicator, on its device. */
static void s_abort_comm(void *ud, int rank) {
    eng_cuda_tp *g = (eng_cuda_tp *)ud;
    if (g->abort_word) /* waiting one-shot all-reduce kernels return */
        __atomic_store_n(g->abort_word, 1, __ATOMIC_SEQ_CST);
    int cur = -1;
    cudaGetDevice(&cur);
    cudaSetDevice(g->dev[rank]);
    if (g->comm[rank] && eng_nccl_comm_abort(g->comm[rank]) < 0)
        fprintf(stderr, "engine tensor parallel: rank %d (GPU %d): %s\n", rank, g->dev[rank],
                eng_nccl_last_error());
    if (cur >= 0)
        cudaSetDevice(cur);
}

static bool s_dead(eng_cuda_tp *g) {
    return g->wedged || (g->watch && eng_tp_watch_dead(g->watch));
}

/* -EHOSTDOWN with "tensor-parallel group aborted: <reason>" once the group is dead. */
static int s_dead_err(eng_cuda_tp *g, char *err, size_t errlen) {
    char why[512] = "";
    if (g->watch)
        eng_tp_watch_reason(g->watch, why, sizeof why);
    if (err && errlen)
        snprintf(err, errlen, "tensor-parallel group aborted: %s",
                 *why ? why : "a rank thread never returned");
    return -EHOSTDOWN;
}

/* Leaves a group whose worker or abort is stuck in the driver: the threads are detached and the
 * memory left to the process exit (freeing under them could hang or crash; the engine is about to
 * exit on its device-lost path). */
static void s_abandon(eng_cuda_tp *g) {
    std::lock_guard<std::mutex> lk(g->mu);
    g->quit = true;
    g->go.notify_all();
    for (std::thread &t : g->th)
        if (t.joinable())
            t.detach();
}

extern "C" void eng_cuda_tp_free(eng_cuda_tp_t *g) {
    if (!g)
        return;
    const bool dead = s_dead(g);
    if (g->wedged) {
        /* a worker is stuck in the driver: freeing under it could crash or hang. The process is
           about to exit (the engine's device-lost path); leave the group to it. */
        s_abandon(g);
        return;
    }
    if (dead && g->watch && eng_tp_watch_settle(g->watch, 5000) < 0) {
        /* an ncclCommAbort still runs (seen on H200s: a rank's graph had launched its collectives
           when its peer failed): freeing under it could hang or crash, and the process is about
           to exit on its device-lost path, so leave the group (and the watch) to it */
        fprintf(stderr, "engine tensor parallel: an ncclCommAbort has not returned after 5 s; "
                        "leaving the group's memory to the process exit\n");
        g->wedged = true;
        s_abandon(g);
        return;
    }
    /* each rank frees its shard and destroys its communicator on its own thread, all at once
       (communicator teardown may wait for the peers); an aborted communicator is already gone */
    if (g->th.size() == (size_t)g->n)
        s_all(g, [g, dead](int r, char *, size_t) {
            if (r < (int)g->sh.size() && g->sh[r])
                g->sh[r] = eng_cuda_model_free(g->sh[r]);
            if (r < (int)g->ar.size())
                ek_ar_free(&g->ar[r]);
            if (!dead)
                eng_nccl_comm_destroy(g->comm[r]);
            g->comm[r] = nullptr;
            return 0;
        }, nullptr, 0, dead ? g->watchdog_ms + 30000 : 0);
    if (g->wedged) { /* stuck during the teardown itself */
        s_abandon(g);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(g->mu);
        g->quit = true;
    }
    g->go.notify_all();
    for (std::thread &t : g->th)
        if (t.joinable())
            t.join();
    if (!dead)
        for (void *c : g->comm)
            eng_nccl_comm_destroy(c);
    eng_tp_watch_free(g->watch);
    if (g->abort_word)
        cudaFreeHost(g->abort_word);
    if (!g->dev.empty())
        cudaSetDevice(g->dev[0]);
    delete g;
}

/* Every rank must hold the same block count (one scheduler, shared block tables): shrink the
 * ranks that got more to the smallest. */
static int s_equal_kv(eng_cuda_tp *g, char *err, size_t errlen) {
    uint32_t nb = UINT32_MAX, bs = 0;
    for (eng_cuda_model_t *m : g->sh) {
        eng_cuda_model_info_t in;
        eng_cuda_model_get_info(m, &in);
        nb = std::min(nb, in.n_blocks);
        bs = in.block_size;
    }
    if (nb == 0 || nb == UINT32_MAX)
        return 0;
    return s_all(g, [g, nb, bs](int r, char *e, size_t el) {
        eng_cuda_model_info_t in;
        eng_cuda_model_get_info(g->sh[r], &in);
        return in.n_blocks == nb ? 0 : eng_cuda_model_alloc_kv(g->sh[r], nb, bs, e, el);
    }, err, errlen);
}

static void s_refresh_info(eng_cuda_tp *g) {
    eng_cuda_model_get_info(g->sh[0], &g->info);
    g->info.tensor_parallel = (uint32_t)g->n;
}

/* Failure-handling settings from the environment: OMNIPIPE_TP_WATCHDOG_MS, OM_CUDA_TP_WAIT,
 * OM_CUDA_TP_FAULT. -EINVAL naming the variable. */
static int s_env(eng_cuda_tp *g, bool *ret_sync, char *err, size_t errlen) {
    const char *w = getenv("OMNIPIPE_TP_WATCHDOG_MS");
    if (w && *w) {
        char *end = nullptr;
        unsigned long long v = strtoull(w, &end, 10);
        if (*end || w[0] == '-' || v > 86400000ull) {
            snprintf(err, errlen, "OMNIPIPE_TP_WATCHDOG_MS: '%s' is not a duration in ms in "
                     "[0, 86400000] (0 = no watchdog)", w);
            return -EINVAL;
        }
        g->watchdog_ms = v;
        if (v && v < 4 * g->grace_ms)
            g->grace_ms = v / 4 > 0 ? v / 4 : 1;
    }
    const char *m = getenv("OM_CUDA_TP_WAIT");
    *ret_sync = false;
    if (m && *m) {
        if (strcmp(m, "sync") != 0 && strcmp(m, "bounded") != 0) {
            snprintf(err, errlen, "OM_CUDA_TP_WAIT: '%s' is not 'bounded' (default) or 'sync'", m);
            return -EINVAL;
        }
        *ret_sync = strcmp(m, "sync") == 0;
    }
    const char *f = getenv("OM_CUDA_TP_FAULT");
    if (f && *f) {
        int rank = -1, used = 0;
        unsigned long long step = 0;
        char kind[16] = "error";
        int nf = sscanf(f, "%d:%llu%n", &rank, &step, &used);
        if (nf == 2 && f[used] == ':')
            nf = sscanf(f + used + 1, "%15s", kind) == 1 ? 3 : 0;
        else if (nf == 2 && f[used] != 0)
            nf = 0;
        if (nf < 2 || rank < 0 || rank >= g->n ||
            (strcmp(kind, "error") != 0 && strcmp(kind, "hang") != 0)) {
            snprintf(err, errlen, "OM_CUDA_TP_FAULT: '%s' is not rank:step[:error|hang] with rank "
                     "in [0, %d)", f, g->n);
            return -EINVAL;
        }
        g->fault_rank = rank;
        g->fault_step = step;
        g->fault_kind = strcmp(kind, "hang") == 0 ? FAULT_HANG : FAULT_ERROR;
        if (g->fault_kind == FAULT_HANG && g->watchdog_ms == 0) {
            snprintf(err, errlen, "OM_CUDA_TP_FAULT: '%s': a hang needs the watchdog "
                     "(OMNIPIPE_TP_WATCHDOG_MS > 0) to end it", f);
            return -EINVAL;
        }
    }
    return 0;
}

/* The one-shot all-reduce (eng_cuda_ar.h), for steps of up to OM_CUDA_TP_AR_ROWS tokens (default
 * 512; two f32 buffers of rows x hidden per GPU): on when the shards reduce in f32, every pair of
 * GPUs has peer access and OM_CUDA_TP_AR is not "nccl". Off: 0 and a note on stderr saying why. */
static int s_ar_setup(eng_cuda_tp *g, char *err, size_t errlen) {
    eng_cuda_model_info_t in;
    eng_cuda_model_get_info(g->sh[0], &in);
    const char *e = getenv("OM_CUDA_TP_AR");
    if (e && *e && strcmp(e, "nccl") != 0 && strcmp(e, "p2p") != 0) {
        snprintf(err, errlen, "OM_CUDA_TP_AR: '%s' is not 'p2p' (default) or 'nccl'", e);
        return -EINVAL;
    }
    if (!in.tp_reduce_f32 || (e && !strcmp(e, "nccl")))
        return 0;
    unsigned long rows = 512;
    const char *er = getenv("OM_CUDA_TP_AR_ROWS");
    if (er && *er) {
        char *end = nullptr;
        rows = strtoul(er, &end, 10);
        if (*end || er[0] == '-' || rows < 1 || rows > 65536) {
            snprintf(err, errlen, "OM_CUDA_TP_AR_ROWS: '%s' is not a row count in [1, 65536]", er);
            return -EINVAL;
        }
    }
    if (in.hidden % 4 || !ek_ar_peer_ok(g->dev.data(), g->n)) {
        fprintf(stderr, "engine tensor parallel: one-shot all-reduce off (%s); NCCL all-reduces\n",
                in.hidden % 4 ? "hidden size not a multiple of 4"
                : g->n > EK_AR_MAX_RANKS ? "more than 8 GPUs"
                                         : "no peer access between every pair of GPUs");
        return 0;
    }
    cudaSetDevice(g->dev[0]);
    cudaError_t ce = cudaHostAlloc((void **)&g->abort_word, sizeof(int),
                                   cudaHostAllocMapped | cudaHostAllocPortable);
    if (ce != cudaSuccess) {
        g->abort_word = nullptr;
        snprintf(err, errlen, "one-shot all-reduce: pinned abort word: %s", cudaGetErrorString(ce));
        return -EIO;
    }
    *g->abort_word = 0;
    g->ar.assign(g->n, ek_ar{});
    const size_t cap = (size_t)rows * in.hidden;
    int r = s_all(g, [g, cap](int k, char *e2, size_t el) {
        int rc = ek_ar_enable_peers(g->dev.data(), g->n, k, e2, el);
        return rc < 0 ? rc : ek_ar_init(&g->ar[k], k, g->n, cap, e2, el);
    }, err, errlen);
    if (r < 0)
        return r; /* eng_cuda_tp_free frees what was allocated */
    std::vector<ek_ar *> all(g->n);
    for (int k = 0; k < g->n; k++)
        all[k] = &g->ar[k];
    ek_ar_connect(all.data(), g->n, g->abort_word);
    for (int k = 0; k < g->n; k++)
        eng_cuda_model_set_tp_ar(g->sh[k], &g->ar[k]);
    return 0;
}

extern "C" int eng_cuda_tp_load(const char *dir, const eng_cuda_model_opts_t *opts,
                                eng_cuda_tp_t **ret, char *err, size_t errlen) {
    int n = opts->tensor_parallel;
    int have = 0;
    if (cudaGetDeviceCount(&have) != cudaSuccess)
        have = 0;
    std::vector<int> dev(n);
    for (int i = 0; i < n; i++) {
        dev[i] = opts->devices ? opts->devices[i] : opts->device + i;
        if (dev[i] < 0 || dev[i] >= have) {
            if (opts->devices)
                snprintf(err, errlen, "devices[%d]: GPU %d does not exist (%d CUDA device%s "
                         "visible)", i, dev[i], have, have == 1 ? "" : "s");
            else
                snprintf(err, errlen, "tensor_parallel: %d GPUs from device %d requested, %d "
                         "visible", n, opts->device, have);
            return -ENODEV;
        }
        for (int j = 0; j < i; j++)
            if (dev[j] == dev[i]) {
                snprintf(err, errlen, "devices[%d]: GPU %d is listed twice (devices[%d])", i,
                         dev[i], j);
                return -EINVAL;
            }
    }
    eng_cuda_tp *g = new eng_cuda_tp();
    g->n = n;
    g->dev = dev;
    g->comm.assign(n, nullptr);
    g->rc.assign(n, 0);
    g->msg.resize(n);
    bool sync_wait = false;
    int r = s_env(g, &sync_wait, err, errlen);
    if (r < 0) {
        delete g;
        return r;
    }
    r = eng_nccl_comms_init(n, g->dev.data(), g->comm.data(), err, errlen);
    if (r < 0) {
        g->comm.clear();
        eng_cuda_tp_free(g);
        return r;
    }
    if (!sync_wait) {
        eng_tp_watch_opts_t wo = {};
        wo.n = n;
        wo.watchdog_ms = g->watchdog_ms;
        wo.grace_ms = g->grace_ms;
        wo.devices = g->dev.data();
        wo.abort_fn = s_abort_comm;
        wo.ud = g;
        if ((r = eng_tp_watch_new(&wo, &g->watch)) < 0) {
            snprintf(err, errlen, "tensor parallel watchdog: %s", strerror(-r));
            eng_tp_watch_free(g->watch);
            g->watch = nullptr;
            eng_cuda_tp_free(g);
            return r;
        }
    }
    g->th.resize(n);
    for (int i = 1; i < n; i++)
        g->th[i] = std::thread(s_worker, g, i);
    std::vector<eng_cuda_model_t *> sh(n, nullptr);
    eng_cuda_model_opts_t base = *opts;
    r = s_all(g, [&](int k, char *e, size_t el) {
        eng_cuda_model_opts_t o = base;
        o.device = g->dev[k];
        o.tensor_parallel = 1;
        return eng_cuda_model_load_shard(dir, &o, k, n, g->comm[k], &sh[k], e, el);
    }, err, errlen);
    g->sh = sh; /* (n), NULL where a rank failed */
    if (r >= 0 && !opts->weights_only)
        r = s_equal_kv(g, err, errlen);
    if (r >= 0 && !opts->weights_only)
        r = s_ar_setup(g, err, errlen);
    if (r < 0) {
        eng_cuda_tp_free(g); /* frees the shards that loaded, each on its thread */
        return r;
    }
    if (g->watch)
        for (eng_cuda_model_t *m : g->sh)
            eng_cuda_model_set_tp_async(m, true);
    s_refresh_info(g);
    cudaSetDevice(g->dev[0]);
    *ret = g;
    return 0;
}

extern "C" int eng_cuda_device_count(void) {
    int have = 0;
    if (cudaGetDeviceCount(&have) != cudaSuccess)
        have = 0;
    return have;
}

extern "C" void eng_cuda_tp_get_info(const eng_cuda_tp_t *g, eng_cuda_model_info_t *ret) {
    *ret = g->info;
}

extern "C" int eng_cuda_tp_reserve(eng_cuda_tp_t *g, uint32_t max_batch_tokens, uint32_t max_seqs,
                                   uint32_t max_ctx, char *err, size_t errlen) {
    if (s_dead(g))
        return s_dead_err(g, err, errlen);
    return s_all(g, [=](int r, char *e, size_t el) {
        return eng_cuda_model_reserve(g->sh[r], max_batch_tokens, max_seqs, max_ctx, e, el);
    }, err, errlen);
}

extern "C" int eng_cuda_tp_alloc_kv(eng_cuda_tp_t *g, uint32_t n_blocks, uint32_t block_size,
                                    char *err, size_t errlen) {
    if (s_dead(g))
        return s_dead_err(g, err, errlen);
    int r = s_all(g, [=](int k, char *e, size_t el) {
        return eng_cuda_model_alloc_kv(g->sh[k], n_blocks, block_size, e, el);
    }, err, errlen);
    if (r >= 0 && n_blocks == 0) /* sized from each GPU's free memory: take the smallest */
        r = s_equal_kv(g, err, errlen);
    s_refresh_info(g);
    return r;
}

extern "C" uint64_t eng_cuda_tp_kv_bytes_per_token(const eng_cuda_tp_t *g) {
    return eng_cuda_model_kv_bytes_per_token(g->sh[0]);
}

extern "C" float *eng_cuda_tp_logits(eng_cuda_tp_t *g) {
    return eng_cuda_model_logits(g->sh[0]);
}

extern "C" int eng_cuda_tp_sync(eng_cuda_tp_t *g) {
    if (s_dead(g))
        return -EHOSTDOWN;
    return s_all(g, [g](int r, char *, size_t) { return eng_cuda_model_sync(g->sh[r]); }, nullptr,
                 0);
}

extern "C" int eng_cuda_tp_capture_hidden(eng_cuda_tp_t *g, int layer, float *ret_hidden) {
    /* rank 0 only: its replicated residual stream is the model's; the other ranks keep their
       graphs (collectives match across graph and eager launches) */
    return eng_cuda_model_capture_hidden(g->sh[0], layer, ret_hidden);
}

extern "C" int eng_cuda_tp_trace(eng_cuda_tp_t *g, uint32_t max_tokens, float *ret_resid,
                                 int32_t *ret_ids) {
    /* rank 0 only, as capture_hidden: its residual stream is replicated, its ids global */
    return eng_cuda_model_trace(g->sh[0], max_tokens, ret_resid, ret_ids);
}

/* One poll of a rank's step (eng_tp_poll_fn; the watch's lock is held): its stream, and every
 * 32nd time its communicator's asynchronous error. */
struct poll_ctx {
    cudaStream_t s;
    void *comm;
    unsigned n;
};

static int s_poll(void *pud, int rank, char *msg, size_t len) {
    poll_ctx *p = (poll_ctx *)pud;
    cudaError_t q = cudaStreamQuery(p->s);
    if (q == cudaSuccess)
        return 1;
    if (q != cudaErrorNotReady) {
        eng_cuda_note_error(__FILE__, __LINE__, cudaGetErrorString(q), (int)q);
        int r = eng_cuda_errno(q);
        snprintf(msg, len, "%s", eng_cuda_last_error());
        return r < 0 ? r : -EIO;
    }
    if ((++p->n & 31) == 0 && eng_nccl_comm_async_error(p->comm, msg, len) < 0)
        return -EIO;
    return 0;
}

/* One rank's part of a watched forward (see the file comment). */
static int s_forward_rank(eng_cuda_tp *g, uint64_t step, int k, const eng_batch_t *b,
                          float *ret_logits, int32_t *ret_ids, char *e, size_t el) {
    eng_tp_watch_t *w = g->watch;
    if (k == g->fault_rank && step == g->fault_step) { /* test hook OM_CUDA_TP_FAULT */
        if (g->fault_kind == FAULT_ERROR) {
            snprintf(e, el, "injected fault (OM_CUDA_TP_FAULT=%d:%llu:error)", k,
                     (unsigned long long)step);
            eng_tp_watch_fail(w, k, -EIO, e);
            return -EIO;
        }
        /* hang: never issue the step, stay "issuing" (like a thread blocked in a launch) until
           the watchdog aborts this rank's communicator */
        while (!eng_tp_watch_abort_started(w, k))
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        snprintf(e, el, "injected hang (OM_CUDA_TP_FAULT=%d:%llu:hang)", k,
                 (unsigned long long)step);
        return eng_tp_watch_issued(w, k);
    }
    int rc;
    try {
        rc = eng_cuda_model_forward(g->sh[k], b, k == 0 ? ret_logits : nullptr,
                                    k == 0 ? ret_ids : nullptr, e, el);
    } catch (const std::exception &ex) {
        snprintf(e, el, "exception: %s", ex.what());
        rc = -EIO;
    }
    if (rc == -EINVAL || rc == -E2BIG) { /* a refused batch: the same on every rank, unless not */
        int rs = eng_tp_watch_skip(w, k, rc, e);
        return rs < 0 ? rs : rc;
    }
    if (rc < 0) {
        eng_tp_watch_fail(w, k, rc, e);
        return rc;
    }
    if ((rc = eng_tp_watch_issued(w, k)) < 0)
        return rc;
    poll_ctx pc = {(cudaStream_t)eng_cuda_model_stream(g->sh[k]), g->comm[k], 0};
    return eng_tp_watch_wait(w, k, s_poll, &pc, g->spin_us);
}

extern "C" int eng_cuda_tp_forward(eng_cuda_tp_t *g, const eng_batch_t *b, float *ret_logits,
                                   int32_t *ret_ids, char *err, size_t errlen) {
    if (!g->watch) /* OM_CUDA_TP_WAIT=sync: each shard synchronises its stream, unbounded */
        return s_all(g, [=](int r, char *e, size_t el) {
            return eng_cuda_model_forward(g->sh[r], b, r == 0 ? ret_logits : nullptr,
                                          r == 0 ? ret_ids : nullptr, e, el);
        }, err, errlen);
    if (s_dead(g) || eng_tp_watch_begin(g->watch) < 0)
        return s_dead_err(g, err, errlen);
    const uint64_t step = g->n_fwd++;
    const uint64_t bound = g->watchdog_ms ? g->watchdog_ms + g->grace_ms + 10000 : 0;
    int r = s_all(g, [=](int k, char *e, size_t el) {
        return s_forward_rank(g, step, k, b, ret_logits, ret_ids, e, el);
    }, err, errlen, bound);
    if (s_dead(g)) {
        /* the group is gone for good: the process's sticky device error, so that engine_svc
           fails its requests (UNAVAILABLE, retryable) and exits for a clean restart */
        r = s_dead_err(g, err, errlen);
        eng_cuda_note_error(__FILE__, __LINE__, err, r);
        eng_cuda_sticky = true;
        cudaSetDevice(g->dev[0]);
    }
    return r;
}

extern "C" int eng_cuda_tp_set_moe_mode(eng_cuda_tp_t *g, int mode) {
    if (s_dead(g))
        return -EHOSTDOWN;
    return s_all(g, [=](int r, char *, size_t) {
        return eng_cuda_model_set_moe_mode(g->sh[r], mode);
    }, nullptr, 0);
}

#define TCHECK(expr)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            snprintf(e, el, "%s: %s", #expr, cudaGetErrorString(e_));                              \
            rc = -EIO;                                                                             \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

extern "C" int eng_cuda_tp_measure_comm(eng_cuda_tp_t *g, uint32_t rows, double *ret_step_ms,
                                        double *ret_allreduce_us, char *err, size_t errlen) {
    const int n_ar = 2 * (int)g->info.n_layers; /* o_proj + MLP per layer */
    const size_t count = (size_t)rows * g->info.hidden;
    const int dt = g->info.tp_reduce_f32 ? 1 : 0; /* the dtype the steps reduce in */
    const size_t esz = dt ? 4 : 2;
    /* the path a step of `rows` tokens takes: the one-shot kernels (bf16 out) or NCCL */
    const bool p2p = !g->ar.empty() && count <= g->ar[0].cap;
    std::vector<double> med(g->n, 0.0);
    if (s_dead(g))
        return s_dead_err(g, err, errlen);
    if (rows == 0) {
        snprintf(err, errlen, "measure_comm: rows must be >= 1");
        return -EINVAL;
    }
    int r = s_all(g, [&](int k, char *e, size_t el) {
        cudaStream_t s = (cudaStream_t)eng_cuda_model_stream(g->sh[k]);
        void *buf = nullptr;
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        cudaEvent_t e0 = nullptr, e1 = nullptr;
        std::vector<float> ms;
        int rc = 0;
        TCHECK(cudaMalloc(&buf, count * (p2p ? 2 : esz)));
        TCHECK(cudaMemsetAsync(buf, 0, count * (p2p ? 2 : esz), s));
        TCHECK(cudaEventCreate(&e0));
        TCHECK(cudaEventCreate(&e1));
        TCHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < n_ar && rc == 0; i++)
            rc = p2p ? ek_ar_sum(s, &g->ar[k], i & 1, (bf16 *)buf, count)
                     : eng_nccl_allreduce_sum(g->comm[k], buf, count, dt, s);
        {
            cudaError_t ce = cudaStreamEndCapture(s, &graph);
            if (rc < 0) {
                snprintf(e, el, "%s", p2p ? "one-shot all-reduce launch failed"
                                          : eng_nccl_last_error());
                goto out;
            }
            TCHECK(ce);
        }
        TCHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (int i = 0; i < 23; i++) {
            TCHECK(cudaEventRecord(e0, s));
            TCHECK(cudaGraphLaunch(exec, s));
            TCHECK(cudaEventRecord(e1, s));
            TCHECK(cudaEventSynchronize(e1));
            float t = 0;
            TCHECK(cudaEventElapsedTime(&t, e0, e1));
            if (i >= 3)
                ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        med[k] = ms[ms.size() / 2];
    out:
        if (exec)
            cudaGraphExecDestroy(exec);
        if (graph)
            cudaGraphDestroy(graph);
        if (e0)
            cudaEventDestroy(e0);
        if (e1)
            cudaEventDestroy(e1);
        if (buf) {
            cudaStreamSynchronize(s);
            cudaFree(buf);
        }
        return rc;
    }, err, errlen);
    if (r < 0)
        return r;
    *ret_step_ms = med[0];
    *ret_allreduce_us = med[0] * 1000.0 / n_ar;
    return 0;
}

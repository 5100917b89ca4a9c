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
 * its own thread at the same step (capture mode thread-local), NCCL kernels included. */
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "eng_cuda_tp.h"
#include "eng_nccl.h"

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
};

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
        int r = job(rank, err, sizeof err);
        std::lock_guard<std::mutex> lk(g->mu);
        g->rc[rank] = r;
        g->msg[rank] = err;
        if (--g->pending == 0)
            g->done.notify_all();
    }
}

/* Runs job(rank) on every rank at once; the first failure in rank order goes to err. */
static int s_all(eng_cuda_tp *g, std::function<int(int, char *, size_t)> job, char *err,
                 size_t errlen) {
    {
        std::lock_guard<std::mutex> lk(g->mu);
        g->job = job;
        g->pending = g->n - 1;
        for (int i = 0; i < g->n; i++) {
            g->rc[i] = 0;
            g->msg[i].clear();
        }
        g->gen++;
    }
    g->go.notify_all();
    cudaSetDevice(g->dev[0]);
    char e0[512] = "";
    int r0 = job(0, e0, sizeof e0);
    std::unique_lock<std::mutex> lk(g->mu);
    g->done.wait(lk, [&] { return g->pending == 0; });
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

extern "C" void eng_cuda_tp_free(eng_cuda_tp_t *g) {
    if (!g)
        return;
    /* each rank frees its shard and destroys its communicator on its own thread, all at once
       (communicator teardown may wait for the peers) */
    if (g->th.size() == (size_t)g->n)
        s_all(g, [g](int r, char *, size_t) {
            if (r < (int)g->sh.size() && g->sh[r])
                g->sh[r] = eng_cuda_model_free(g->sh[r]);
            eng_nccl_comm_destroy(g->comm[r]);
            g->comm[r] = nullptr;
            return 0;
        }, nullptr, 0);
    {
        std::lock_guard<std::mutex> lk(g->mu);
        g->quit = true;
    }
    g->go.notify_all();
    for (std::thread &t : g->th)
        if (t.joinable())
            t.join();
    for (void *c : g->comm)
        eng_nccl_comm_destroy(c);
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

extern "C" int eng_cuda_tp_load(const char *dir, const eng_cuda_model_opts_t *opts,
                                eng_cuda_tp_t **ret, char *err, size_t errlen) {
    int n = opts->tensor_parallel;
    int have = 0;
    if (cudaGetDeviceCount(&have) != cudaSuccess)
        have = 0;
    if (opts->device < 0 || opts->device + n > have) {
        snprintf(err, errlen, "tensor_parallel: %d GPUs from device %d requested, %d visible", n,
                 opts->device, have);
        return -ENODEV;
    }
    eng_cuda_tp *g = new eng_cuda_tp();
    g->n = n;
    g->dev.resize(n);
    g->comm.assign(n, nullptr);
    g->rc.assign(n, 0);
    g->msg.resize(n);
    for (int i = 0; i < n; i++)
        g->dev[i] = opts->device + i;
    int r = eng_nccl_comms_init(n, g->dev.data(), g->comm.data(), err, errlen);
    if (r < 0) {
        g->comm.clear();
        eng_cuda_tp_free(g);
        return r;
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
    if (r < 0) {
        eng_cuda_tp_free(g); /* frees the shards that loaded, each on its thread */
        return r;
    }
    s_refresh_info(g);
    cudaSetDevice(g->dev[0]);
    *ret = g;
    return 0;
}

extern "C" void eng_cuda_tp_get_info(const eng_cuda_tp_t *g, eng_cuda_model_info_t *ret) {
    *ret = g->info;
}

extern "C" int eng_cuda_tp_reserve(eng_cuda_tp_t *g, uint32_t max_batch_tokens, uint32_t max_seqs,
                                   uint32_t max_ctx, char *err, size_t errlen) {
    return s_all(g, [=](int r, char *e, size_t el) {
        return eng_cuda_model_reserve(g->sh[r], max_batch_tokens, max_seqs, max_ctx, e, el);
    }, err, errlen);
}

extern "C" int eng_cuda_tp_alloc_kv(eng_cuda_tp_t *g, uint32_t n_blocks, uint32_t block_size,
                                    char *err, size_t errlen) {
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

extern "C" int eng_cuda_tp_forward(eng_cuda_tp_t *g, const eng_batch_t *b, float *ret_logits,
                                   int32_t *ret_ids, char *err, size_t errlen) {
    return s_all(g, [=](int r, char *e, size_t el) {
        return eng_cuda_model_forward(g->sh[r], b, r == 0 ? ret_logits : nullptr,
                                      r == 0 ? ret_ids : nullptr, e, el);
    }, err, errlen);
}

extern "C" int eng_cuda_tp_set_moe_mode(eng_cuda_tp_t *g, int mode) {
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
    std::vector<double> med(g->n, 0.0);
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
        TCHECK(cudaMalloc(&buf, count * esz));
        TCHECK(cudaMemsetAsync(buf, 0, count * esz, s));
        TCHECK(cudaEventCreate(&e0));
        TCHECK(cudaEventCreate(&e1));
        TCHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < n_ar && rc == 0; i++)
            rc = eng_nccl_allreduce_sum(g->comm[k], buf, count, dt, s);
        {
            cudaError_t ce = cudaStreamEndCapture(s, &graph);
            if (rc < 0) {
                snprintf(e, el, "%s", eng_nccl_last_error());
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

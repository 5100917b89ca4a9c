/* eng_cuda_model.cu: the fast CUDA model runner (eng_cuda.h): Qwen3 dense / Qwen3-MoE / Qwen3-Omni
 * thinker text decoder, bf16 weights and activations, f32 accumulation and statistics.
 *
 * Start: config.json -> weights (safetensors read with pread into pinned staging and copied to the
 * GPU, or dummy random weights generated on the GPU) -> scratch for max_batch_tokens -> KV pools
 * from a fraction of what is left (one extra "trash" block takes the writes of padding tokens).
 * With opts.weights_only the caller sizes the last two itself (eng_cuda_model_alloc_kv with the
 * scheduler's block count, eng_cuda_model_reserve with its step limits): that is how eng_model
 * puts this runner behind the engine service.
 * Each step: one upload of the step metadata (ids, positions, slots, block tables, tiles), then
 * embed -> 48 x [add+rmsnorm, QKV GEMM, qk-norm+rope+KV write, attention, O GEMM, add+rmsnorm,
 * MoE] -> final norm -> logits rows -> lm_head -> argmax. Steps of T <= 8 tokens fuse these into
 * five kernels per layer (docs/engine.md, "Decode-path kernels") and a three-kernel tail (final
 * norm of the logits rows only, lm_head with argmax partials, argmax reduce). Decode steps (every
 * sequence one token) are replayed from CUDA graphs captured per batch-size bucket.
 *
 * Not here: scheduling, prefix-cache bookkeeping (the scheduler owns block tables), sampling
 * beyond greedy (eng_cuda_sample.cu, the cuda backend's SAMPLE hook). Invariants: nothing is allocated per step;
 * the metadata layout is fixed, so graph replays see the same device pointers. */
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <unistd.h>
#include <vector>

#include <jansson.h>

#include "eng_cuda.h"
#include "eng_cuda_kern.cuh"
#include "eng_cuda_attn_tc.cuh"
#include "eng_cuda_ar.h"
#include "eng_cuda_tp.h"
#include "eng_nccl.h"

extern bool eng_cuda_sticky; /* eng_cuda_kern.cu */
#define s_sticky eng_cuda_sticky

#define MCHECK(expr)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            eng_cuda_note_error(__FILE__, __LINE__, cudaGetErrorString(e_), (int)e_);              \
            int r_ = eng_cuda_errno(e_);                                                           \
            if (r_ == -EIO)                                                                        \
                s_sticky = true;                                                                   \
            snprintf(err, errlen, "%s", eng_cuda_last_error());                                    \
            return r_;                                                                             \
        }                                                                                          \
    } while (0)

#define RCHECK(...)                                                                                \
    do {                                                                                           \
        int r_ = (__VA_ARGS__);                                                                         \
        if (r_ < 0) {                                                                              \
            if (r_ == -EIO)                                                                        \
                s_sticky = true;                                                                   \
            snprintf(err, errlen, "%s", eng_cuda_last_error());                                    \
            return r_;                                                                             \
        }                                                                                          \
    } while (0)

struct cfg {
    int V, D, L, Hq, Hk, hd, E, K, I;
    bool dense, norm_topk, tie;
    float eps, theta;
    int sec[3];
};

struct layer_w {
    bf16 *attn_norm; /* (D) */
    bf16 *wqkv;      /* (Hq·hd + 2·Hk·hd, D) q, k, v rows stacked */
    bf16 *q_norm;    /* (hd) */
    bf16 *k_norm;    /* (hd) */
    bf16 *wo;        /* (D, Hq·hd) */
    bf16 *ffn_norm;  /* (D) */
    bf16 *router;    /* (E, D); dense: zeros (1, D) */
    bf16 *gate;      /* (E, I, D) */
    bf16 *up;        /* (E, I, D) */
    bf16 *down;      /* (E, D, I) */
};

/* Step metadata: fixed layout in one device buffer, uploaded from pinned host memory. */
struct meta_off {
    size_t tokens, tok_seq, tok_pos, slots, pos3, logit_rows, tiles, bt, end; /* int32 offsets */
};

struct graph_ent {
    int bucket;              /* padded batch size */
    cudaGraphExec_t exec;
    int uses;                /* eager runs before capture */
};

struct eng_cuda_model {
    cfg c;
    eng_cuda_model_opts_t o;
    cudaStream_t s;
    cublasHandle_t blas;
    void *blas_ws;
    ek_ctx kc;
    std::vector<void *> allocs;       /* weights, inv_freq, cuBLAS workspace: freed at the end */
    std::vector<void *> scratch;      /* step buffers (s_scratch_init), freed on re-reserve */
    bf16 *embed, *final_norm, *lm_head;
    std::vector<layer_w> lw;
    float *inv_freq;          /* (hd/2) */
    float *rope_tab;          /* (2, max_batch_tokens, hd) a step's cos/sin (ek_rope_table) */
    bool rope_tab_on;         /* steps with T > 8: the table once per step instead of the
                                 cos/sin per (token, head) per layer (OM_CUDA_ROPE_TAB=0: off) */
    bf16 *kv;                 /* (2, L, n_slots, Hk·hd); NULL until s_kv_init */
    int64_t n_slots;          /* (n_blocks + 1) · block_size */
    int n_blocks;             /* usable blocks; block n_blocks is the trash block */
    int max_blocks;           /* block-table row length = max_ctx / block_size */
    /* activations, sized for max_batch_tokens */
    bf16 *h, *h2, *xn, *qkv, *attn, *delta, *xl; /* h/h2: residual ping-pong (decode path) */
    int *attn_cnt;            /* (max_batch_tokens, Hq) split-attention counters, zero */
    int *router_cnt;          /* (1) fused-router counter, zero */
    int *rope_cnt;            /* (Hq + Hk) fused QKV+rope per-head counters, zero */
    int *moe_cnt;             /* (EK_MOE_FUSED_CNT) fused-MoE tickets/counters, zero */
    float *logits;            /* (max_seqs, V) */
    int32_t *ids_dev;         /* (max_seqs) */
    float *amax_v;            /* (64, 32) argmax partials */
    int *amax_i;              /* (64, 32) */
    float *tail_pv;           /* (8, ceil(V/8)) decode tail: lm_head per-block argmax partials */
    int *tail_pi;             /* (8, ceil(V/8)) */
    float *partial;           /* split-K attention partials */
    int max_splits;
    ek_moe_scratch ms;
    int32_t *meta_dev;        /* NULL until s_scratch_init */
    int32_t *meta_host;       /* pinned */
    meta_off mo;
    std::vector<graph_ent> graphs;
    bool fuse;                /* fused decode kernels (default on; OM_CUDA_NOFUSE=1 turns off) */
    bool pdl;                 /* programmatic dependent launch in decode (OM_CUDA_NOPDL=1: off) */
    bool fuse_rope;           /* decode: QK-norm+RoPE+KV write in the QKV GEMV epilogue
                                 (opt-in, OM_CUDA_FUSE_ROPE=1; measured slower, see docs) */
    bool attn_rope;           /* decode: QK-norm+RoPE+KV write inside the decode attention
                                 kernel k_attn_dec (opt-in, OM_CUDA_ATTN_ROPE=1; measured
                                 slower on an H100, see docs) */
    bool fuse_moe;            /* decode: gate/up and down in one persistent kernel
                                 (opt-in, OM_CUDA_FUSE_MOE=1; measured slower, see docs) */
    bool tail;                /* decode: final add+RMSNorm fused with the logits-row gather,
                                 greedy argmax folded into the lm_head GEMV (default on;
                                 OM_CUDA_TAIL=0 restores the four-launch tail) */
    int router_local;         /* decode: the router writes logits only; k_moe_gu / k_moe_down_wk
                                 run the softmax + top-k (default 1; OM_CUDA_ROUTER_LOCAL=2 with
                                 the router's shuffle argmax; 0 off) */
    int router_local_t;       /* ... in steps of at most this many tokens (OM_CUDA_ROUTER_LOCAL_T,
                                 default 1: every k_moe_gu block runs the top-k, one wave of
                                 blocks at T = 1, T waves at T > 1) */
    int oproj_ks;             /* decode: o_proj GEMV rows split over this many warps (2, 4, 8;
                                 OM_CUDA_OPROJ_KSPLIT; default 1 = k_gemv, measured faster) */
    int cap_layer;            /* capture_hidden */
    float *cap_host;
    eng_cuda_model_info_t info;
    /* TP: tensor parallelism (eng_cuda_tp.h). A facade (tp != NULL) only forwards its calls to
       the group. A shard (tp_n > 1) has c = the local shapes (Hq/N, Hk/N heads, I/N intermediate)
       and cf = the checkpoint's; comm is its ncclComm_t. */
    eng_cuda_tp *tp;
    int tp_rank, tp_n;
    void *comm;
    bool tp_async;            /* TP: forward returns without the final stream sync (the group
                                 waits, bounded: eng_cuda_tp.cu) */
    cfg cf;
    /* TP expert mode (moe_parallel expert, MoE models): c.I stays whole and this shard holds
       experts [e0, e0 + ne) of c.E (router and routing ids global); ne = 0: all experts. */
    bool ep;
    int e0, ne;
    /* TP f32 reduction (OM_CUDA_TP_REDUCE=fp32, default): partial sums written to delta32 (T, D)
       f32, all-reduced in f32, rounded once into delta */
    bool red32;
    float *delta32;
    /* TP one-shot all-reduce over peer memory (eng_cuda_ar.h; set by the group, owned by it):
       with red32 and T·D <= ar->cap, the partials go to ar->buf[0] (o_proj) / buf[1] (MLP/MoE)
       and k_ar_oneshot sums them into delta; NULL: NCCL */
    ek_ar *ar;
    /* eng_cuda_model_trace: host (L, T, D) residuals and (L, T, K) routing ids, T <= trace_T */
    float *trace_h;
    int32_t *trace_ids;
    int trace_T;
};

/* --- config ------------------------------------------------------------------------------- */

static int s_geti(json_t *o, const char *k, int def) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}
static double s_getf(json_t *o, const char *k, double def) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : def;
}

static int s_parse_config(const char *dir, cfg *c, char *err, size_t errlen) {
    std::string path = std::string(dir) + "/config.json";
    json_error_t je;
    json_t *root = json_load_file(path.c_str(), 0, &je);
    if (!root) {
        snprintf(err, errlen, "%s: %s (line %d)", path.c_str(), je.text, je.line);
        return -EINVAL;
    }
    json_t *tc = root;
    json_t *th = json_object_get(root, "thinker_config");
    bool tie_top = json_is_true(json_object_get(root, "tie_word_embeddings"));
    if (th) {
        tc = json_object_get(th, "text_config");
        tie_top = json_is_true(json_object_get(th, "tie_word_embeddings"));
        if (!tc) {
            json_decref(root);
            snprintf(err, errlen, "%s: thinker_config.text_config missing", path.c_str());
            return -EINVAL;
        }
    }
    memset(c, 0, sizeof *c);
    c->V = s_geti(tc, "vocab_size", 0);
    c->D = s_geti(tc, "hidden_size", 0);
    c->L = s_geti(tc, "num_hidden_layers", 0);
    c->Hq = s_geti(tc, "num_attention_heads", 0);
    c->Hk = s_geti(tc, "num_key_value_heads", c->Hq);
    c->hd = s_geti(tc, "head_dim", c->Hq ? c->D / c->Hq : 0);
    c->E = s_geti(tc, "num_experts", s_geti(tc, "num_local_experts", 0));
    c->K = s_geti(tc, "num_experts_per_tok", 1);
    c->I = s_geti(tc, "moe_intermediate_size", 0);
    c->eps = (float)s_getf(tc, "rms_norm_eps", 1e-6);
    c->norm_topk = !json_is_false(json_object_get(tc, "norm_topk_prob"));
    c->tie = tie_top || json_is_true(json_object_get(tc, "tie_word_embeddings"));
    json_t *rp = json_object_get(tc, "rope_parameters");
    if (!rp)
        rp = json_object_get(tc, "rope_scaling");
    c->theta = (float)s_getf(tc, "rope_theta", rp ? s_getf(rp, "rope_theta", 1e6) : 1e6);
    json_t *ms = rp ? json_object_get(rp, "mrope_section") : nullptr;
    if (json_is_array(ms) && json_array_size(ms) == 3)
        for (int i = 0; i < 3; i++)
            c->sec[i] = (int)json_integer_value(json_array_get(ms, i));
    json_t *mol = json_object_get(tc, "mlp_only_layers");
    bool mlp_only = json_is_array(mol) && json_array_size(mol) > 0;
    if (c->E == 0) {
        c->dense = true;
        c->E = 1;
        c->K = 1;
        c->I = s_geti(tc, "intermediate_size", 0);
    }
    json_decref(root);
    const char *bad = nullptr;
    if (c->V <= 0) bad = "vocab_size";
    else if (c->D <= 0 || c->D % 8) bad = "hidden_size";
    else if (c->L <= 0) bad = "num_hidden_layers";
    else if (c->Hq <= 0) bad = "num_attention_heads";
    else if (c->Hk <= 0 || c->Hq % c->Hk) bad = "num_key_value_heads";
    else if (c->hd <= 0 || c->hd > 256 || c->hd % 2) bad = "head_dim";
    else if (c->E > 512) bad = "num_experts";
    else if (c->K <= 0 || c->K > c->E || c->K > 32) bad = "num_experts_per_tok";
    else if (c->I <= 0) bad = c->dense ? "intermediate_size" : "moe_intermediate_size";
    if (bad) {
        snprintf(err, errlen, "%s: %s: missing or unsupported value", path.c_str(), bad);
        return -EINVAL;
    }
    if (mlp_only) {
        snprintf(err, errlen, "%s: mlp_only_layers: mixed dense/MoE layers are not supported",
                 path.c_str());
        return -EOPNOTSUPP;
    }
    return 0;
}

/* A default-off switch: on only when set to "1". */
static bool s_env_flag(const char *name) {
    const char *e = getenv(name);
    return e && !strcmp(e, "1");
}

/* --- allocation --------------------------------------------------------------------------- */

static int s_alloc_in(std::vector<void *> &list, void **p, size_t bytes, const char *what,
                      char *err, size_t errlen) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        snprintf(err, errlen, "out of device memory: %s needs %.2f GiB, %.2f GiB free of %.2f GiB",
                 what, bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);
        return -ENOMEM;
    }
    list.push_back(*p);
    return 0;
}

static int s_alloc(eng_cuda_model *m, void **p, size_t bytes, const char *what, char *err,
                   size_t errlen) {
    return s_alloc_in(m->allocs, p, bytes, what, err, errlen);
}

/* --- safetensors loading ------------------------------------------------------------------ */

struct dest {
    std::string name;
    bf16 *ptr;
    size_t elems;
    bool loaded;
    /* TP slice (cols == 0: the whole tensor): rows [r0, r0+nr) x columns [c0, c0+nc) of the
       checkpoint's (rows, cols) tensor, stored densely (nr, nc) at ptr (elems = nr·nc) */
    size_t rows, cols, r0, nr, c0, nc;
};

static bool s_ends_with(const std::string &s, const char *suf) {
    size_t n = strlen(suf);
    return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

/* TP: one slice of a tensor at file offset `base`: whole rows [r0, r0+nr) read in chunks into
 * the pinned stage, columns [c0, c0+nc) of them copied to the GPU. */
static int s_load_slice(int fd, uint64_t base, void *stage, size_t chunk, const dest &d,
                        const char *file, const char *key, char *err, size_t errlen) {
    size_t rb = d.cols * 2;
    size_t per = chunk / rb ? chunk / rb : 0;
    if (per == 0) {
        snprintf(err, errlen, "%s: tensor '%s': row of %zu bytes exceeds the %zu-byte stage", file,
                 key, rb, chunk);
        return -EINVAL;
    }
    for (size_t r = 0; r < d.nr; r += per) {
        size_t n = d.nr - r < per ? d.nr - r : per;
        if (pread(fd, stage, n * rb, (off_t)(base + (d.r0 + r) * rb)) != (ssize_t)(n * rb)) {
            snprintf(err, errlen, "%s: tensor '%s': short read", file, key);
            return -EIO;
        }
        cudaError_t e = cudaMemcpy2D(d.ptr + r * d.nc, d.nc * 2, (char *)stage + d.c0 * 2, rb,
                                     d.nc * 2, n, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            snprintf(err, errlen, "tensor '%s': copy to GPU: %s", key, cudaGetErrorString(e));
            return -EIO;
        }
    }
    return 0;
}

static int s_load_safetensors(eng_cuda_model *m, const char *dir, std::vector<dest> &dests,
                              char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open: %s", dir, strerror(errno));
        return -ENOENT;
    }
    std::vector<std::string> files;
    while (struct dirent *de = readdir(d)) {
        std::string n = de->d_name;
        if (s_ends_with(n, ".safetensors") && n.rfind("golden", 0) != 0)
            files.push_back(std::string(dir) + "/" + n);
    }
    closedir(d);
    if (files.empty()) {
        snprintf(err, errlen, "%s: no *.safetensors files", dir);
        return -ENOENT;
    }
    const size_t chunk = 64u << 20;
    void *stage = nullptr;
    MCHECK(cudaMallocHost(&stage, chunk));
    int rc = 0;
    for (const std::string &f : files) {
        int fd = open(f.c_str(), O_RDONLY);
        uint64_t hlen = 0;
        if (fd < 0 || pread(fd, &hlen, 8, 0) != 8 || hlen > (100u << 20)) {
            snprintf(err, errlen, "%s: unreadable safetensors header", f.c_str());
            rc = -EIO;
            if (fd >= 0)
                close(fd);
            break;
        }
        std::string hdr(hlen, '\0');
        if (pread(fd, &hdr[0], hlen, 8) != (ssize_t)hlen) {
            snprintf(err, errlen, "%s: short read of header", f.c_str());
            rc = -EIO;
            close(fd);
            break;
        }
        json_error_t je;
        json_t *h = json_loadb(hdr.data(), hlen, 0, &je);
        if (!h) {
            snprintf(err, errlen, "%s: header JSON: %s", f.c_str(), je.text);
            rc = -EINVAL;
            close(fd);
            break;
        }
        const char *key;
        json_t *val;
        json_object_foreach(h, key, val) {
            std::string name = key;
            if (name == "__metadata__")
                continue;
            if (name.rfind("thinker.", 0) == 0)
                name = name.substr(8);
            dest *dst = nullptr;
            for (dest &x : dests)
                if (x.name == name) {
                    dst = &x;
                    break;
                }
            if (!dst || !dst->ptr)
                continue; /* audio/vision towers, talker: not the text decoder; TP expert mode:
                             another rank's expert */
            const char *dt = json_string_value(json_object_get(val, "dtype"));
            json_t *offs = json_object_get(val, "data_offsets");
            if (!dt || strcmp(dt, "BF16") != 0) {
                snprintf(err, errlen, "%s: tensor '%s': dtype %s, only BF16 is supported",
                         f.c_str(), key, dt ? dt : "?");
                rc = -EOPNOTSUPP;
                break;
            }
            uint64_t b0 = json_integer_value(json_array_get(offs, 0));
            uint64_t b1 = json_integer_value(json_array_get(offs, 1));
            size_t full = dst->cols ? dst->rows * dst->cols : dst->elems;
            if (b1 - b0 != full * 2) {
                snprintf(err, errlen, "%s: tensor '%s': %llu bytes, expected %zu from config.json",
                         f.c_str(), key, (unsigned long long)(b1 - b0), full * 2);
                rc = -EINVAL;
                break;
            }
            uint64_t base = 8 + hlen + b0;
            if (dst->cols) { /* TP slice: read its rows only, copy its columns */
                rc = s_load_slice(fd, base, stage, chunk, *dst, f.c_str(), key, err, errlen);
                if (rc < 0)
                    break;
                dst->loaded = true;
                continue;
            }
            for (uint64_t o = 0; o < b1 - b0; o += chunk) {
                size_t n = (size_t)((b1 - b0 - o) < chunk ? (b1 - b0 - o) : chunk);
                if (pread(fd, stage, n, (off_t)(base + o)) != (ssize_t)n) {
                    snprintf(err, errlen, "%s: tensor '%s': short read", f.c_str(), key);
                    rc = -EIO;
                    break;
                }
                cudaError_t e = cudaMemcpy((char *)dst->ptr + o, stage, n, cudaMemcpyHostToDevice);
                if (e != cudaSuccess) {
                    snprintf(err, errlen, "tensor '%s': copy to GPU: %s", key,
                             cudaGetErrorString(e));
                    rc = -EIO;
                    break;
                }
            }
            if (rc < 0)
                break;
            dst->loaded = true;
        }
        json_decref(h);
        close(fd);
        if (rc < 0)
            break;
    }
    cudaFreeHost(stage);
    if (rc < 0)
        return rc;
    for (dest &x : dests)
        if (!x.loaded && x.ptr) {
            snprintf(err, errlen, "%s: tensor '%s' missing from the checkpoint", dir,
                     x.name.c_str());
            return -EINVAL;
        }
    return 0;
}

/* --- construction ------------------------------------------------------------------------- */

static void s_meta_layout(eng_cuda_model *m) {
    int T = (int)m->o.max_batch_tokens, S = (int)m->o.max_seqs;
    meta_off &mo = m->mo;
    size_t p = 0;
    auto take = [&](size_t n) {
        size_t r = p;
        p += (n + 63) & ~(size_t)63;
        return r;
    };
    mo.tokens = take(T);
    mo.tok_seq = take(T);
    mo.tok_pos = take(T);
    mo.slots = take(T);
    mo.pos3 = take(3 * (size_t)T);
    mo.logit_rows = take(S);
    mo.tiles = take(3 * ((size_t)T / 64 + S + 1));
    mo.bt = take((size_t)S * m->max_blocks);
    mo.end = p;
}

/* Drops the captured decode graphs (they hold the device pointers of scratch and KV). */
static void s_drop_graphs(eng_cuda_model *m) {
    for (graph_ent &g : m->graphs)
        if (g.exec)
            cudaGraphExecDestroy(g.exec);
    m->graphs.clear();
}

static void s_scratch_free(eng_cuda_model *m) {
    if (m->s)
        cudaStreamSynchronize(m->s);
    s_drop_graphs(m);
    for (void *p : m->scratch)
        cudaFree(p);
    m->scratch.clear();
    if (m->meta_host)
        cudaFreeHost(m->meta_host);
    m->meta_host = nullptr;
    m->meta_dev = nullptr;
    m->h = m->h2 = m->xn = m->qkv = m->attn = m->delta = m->xl = nullptr;
    m->delta32 = nullptr;
    m->rope_tab = nullptr;
    m->attn_cnt = m->router_cnt = m->rope_cnt = m->moe_cnt = nullptr;
    m->logits = nullptr;
    m->ids_dev = nullptr;
    m->amax_v = nullptr;
    m->amax_i = nullptr;
    m->tail_pv = nullptr;
    m->tail_pi = nullptr;
    m->partial = nullptr;
}

static void s_kv_free(eng_cuda_model *m) {
    if (m->s)
        cudaStreamSynchronize(m->s);
    s_drop_graphs(m);
    if (m->kv)
        cudaFree(m->kv);
    m->kv = nullptr;
    m->n_blocks = 0;
    m->n_slots = 0;
    m->info.n_blocks = 0;
    m->info.kv_bytes = 0;
}

extern "C" eng_cuda_model_t *eng_cuda_model_free(eng_cuda_model_t *m) {
    if (!m)
        return nullptr;
    if (m->tp) { /* TP facade */
        eng_cuda_tp_free(m->tp);
        delete m;
        return nullptr;
    }
    s_scratch_free(m);
    s_kv_free(m);
    for (void *p : m->allocs)
        cudaFree(p);
    if (m->blas)
        cublasDestroy(m->blas);
    if (m->s)
        cudaStreamDestroy(m->s);
    delete m;
    return nullptr;
}

/* Step buffers for m->o.max_batch_tokens tokens, max_seqs sequences and block tables of
 * max_ctx / block_size entries. */
static int s_scratch_init(eng_cuda_model *m, char *err, size_t errlen) {
    const cfg &c = m->c;
    const eng_cuda_model_opts_t &o = m->o;
    std::vector<void *> &sl = m->scratch;
    int Nqkv = (c.Hq + 2 * c.Hk) * c.hd;
    int T = (int)o.max_batch_tokens, S = (int)o.max_seqs;
    m->max_blocks = (int)((o.max_ctx + o.block_size - 1) / o.block_size);
    m->max_splits = 32;
    RCHECK(s_alloc_in(sl, (void **)&m->h, (size_t)T * c.D * 2, "scratch: hidden", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->h2, (size_t)T * c.D * 2, "scratch: hidden", err, errlen));
    /* counters, all zero: attention (T·Hq), router (16), rope (Hq + Hk), MoE */
    size_t n_cnt = (size_t)T * c.Hq + 16 + (size_t)(c.Hq + c.Hk) + EK_MOE_FUSED_CNT;
    RCHECK(s_alloc_in(sl, (void **)&m->attn_cnt, n_cnt * 4, "scratch: counters", err, errlen));
    MCHECK(cudaMemset(m->attn_cnt, 0, n_cnt * 4));
    m->router_cnt = m->attn_cnt + (size_t)T * c.Hq;
    m->rope_cnt = m->router_cnt + 16;
    m->moe_cnt = m->rope_cnt + (c.Hq + c.Hk);
    RCHECK(s_alloc_in(sl, (void **)&m->xn, (size_t)T * c.D * 2, "scratch: normed", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->qkv, (size_t)T * Nqkv * 2, "scratch: qkv", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->attn, (size_t)T * c.Hq * c.hd * 2, "scratch: attn", err,
                      errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->delta, (size_t)T * c.D * 2, "scratch: delta", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->rope_tab, (size_t)2 * T * c.hd * 4, "scratch: rope table",
                      err, errlen));
    if (m->red32)
        RCHECK(s_alloc_in(sl, (void **)&m->delta32, (size_t)T * c.D * 4, "scratch: f32 delta",
                          err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->xl, (size_t)S * c.D * 2, "scratch: logits rows", err,
                      errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->logits, (size_t)S * c.V * 4, "scratch: logits", err,
                      errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->ids_dev, (size_t)S * 4, "scratch: ids", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->amax_v, 64 * 32 * 4, "scratch: argmax", err, errlen));
    RCHECK(s_alloc_in(sl, (void **)&m->amax_i, 64 * 32 * 4, "scratch: argmax", err, errlen));
    {   /* decode tail (R <= 8 logits rows): the lm_head GEMV's per-block argmax partials */
        const size_t np = (size_t)8 * ek_lm_head_argmax_partials(8, c.V);
        RCHECK(s_alloc_in(sl, (void **)&m->tail_pv, np * 4, "scratch: argmax partials", err,
                          errlen));
        RCHECK(s_alloc_in(sl, (void **)&m->tail_pi, np * 4, "scratch: argmax partials", err,
                          errlen));
    }
    /* splits per step are capped by T (see forward): T·splits <= max(1024, 8·T_max) */
    size_t pb = (size_t)(8 * T > 1024 ? 8 * T : 1024) * c.Hq * (c.hd + 2) * 4;
    RCHECK(s_alloc_in(sl, (void **)&m->partial, pb, "scratch: attention partials", err, errlen));
    void *msb;
    RCHECK(s_alloc_in(sl, &msb, ek_moe_scratch_bytes(T, c.D, c.I, c.E, c.K), "scratch: MoE", err,
                      errlen));
    ek_moe_scratch_carve(&m->ms, msb, T, c.D, c.I, c.E, c.K);
    if (m->o.profile_skip & ENG_CUDA_SKIP_ROUTER) {
        /* profiling without the router: every token keeps K distinct experts, weights 1/K */
        std::vector<int32_t> ids((size_t)T * c.K);
        std::vector<float> wts((size_t)T * c.K, 1.0f / (float)c.K);
        for (size_t i = 0; i < ids.size(); i++)
            ids[i] = (int32_t)(((i % c.K) * (c.E / c.K) + i / c.K) % c.E);
        MCHECK(cudaMemcpy(m->ms.ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        MCHECK(cudaMemcpy(m->ms.wts, wts.data(), wts.size() * 4, cudaMemcpyHostToDevice));
    }
    s_meta_layout(m);
    RCHECK(s_alloc_in(sl, (void **)&m->meta_dev, m->mo.end * 4, "scratch: step metadata", err,
                      errlen));
    MCHECK(cudaMallocHost(&m->meta_host, m->mo.end * 4));
    return 0;
}

/* KV pools: n_blocks usable blocks (0: from kv_fraction of the free memory) plus the trash block. */
static int s_kv_init(eng_cuda_model *m, int64_t nb, char *err, size_t errlen) {
    const cfg &c = m->c;
    const eng_cuda_model_opts_t &o = m->o;
    size_t per_block = (size_t)2 * c.L * o.block_size * c.Hk * c.hd * 2;
    size_t fr = 0, tot = 0;
    MCHECK(cudaMemGetInfo(&fr, &tot));
    if (nb <= 0) {
        double frac = o.kv_fraction > 0 ? o.kv_fraction : 0.90;
        nb = (int64_t)((double)fr * frac / per_block) - 1;
        if (nb < 1) {
            snprintf(err, errlen,
                     "out of device memory: KV cache: no block of %.1f MiB fits (%.2f GiB free after "
                     "%.2f GiB of weights)",
                     per_block / 1048576.0, fr / 1073741824.0, m->info.weight_bytes / 1073741824.0);
            return -ENOMEM;
        }
        if (nb > (1 << 30) / (int64_t)o.block_size)
            nb = (1 << 30) / (int64_t)o.block_size;
    } else if (nb > (1 << 30) / (int64_t)o.block_size) {
        snprintf(err, errlen, "KV cache: %lld blocks of %u tokens exceed the 2^30 slot limit",
                 (long long)nb, o.block_size);
        return -EINVAL;
    }
    std::vector<void *> one;
    int r = s_alloc_in(one, (void **)&m->kv, (size_t)(nb + 1) * per_block, "KV cache", err, errlen);
    if (r < 0) {
        char detail[256];
        snprintf(detail, sizeof detail, "%s", err);
        snprintf(err, errlen, "%s (%lld blocks of %u tokens, %.1f MiB each; lower kv_fraction or "
                 "kv_blocks in the engine config)", detail, (long long)nb, o.block_size, per_block / 1048576.0);
        m->kv = nullptr;
        return r;
    }
    MCHECK(cudaMemset(m->kv, 0, (size_t)(nb + 1) * per_block));
    m->n_blocks = (int)nb;
    m->n_slots = (nb + 1) * o.block_size;
    m->info.n_blocks = m->n_blocks;
    m->info.block_size = o.block_size;
    m->info.kv_bytes = (uint64_t)(nb + 1) * per_block;
    return 0;
}

/* TP: marks a dest as a slice of a (rows, cols) checkpoint tensor. */
static void s_tp_slice(dest &d, size_t rows, size_t cols, size_t r0, size_t nr, size_t c0,
                       size_t nc) {
    d.rows = rows;
    d.cols = cols;
    d.r0 = r0;
    d.nr = nr;
    d.c0 = c0;
    d.nc = nc;
}

static int s_model_init(eng_cuda_model *m, const char *dir, char *err, size_t errlen) {
    cfg &c = m->c;
    const cfg &cf = m->cf;
    eng_cuda_model_opts_t &o = m->o;
    MCHECK(cudaSetDevice(o.device));
    MCHECK(cudaStreamCreateWithFlags(&m->s, cudaStreamNonBlocking));
    if (cublasCreate(&m->blas) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS: cublasCreate failed");
        return -EIO;
    }
    auto t0 = std::chrono::steady_clock::now();
    int Nqkv = (c.Hq + 2 * c.Hk) * c.hd;
    /* weights */
    std::vector<dest> dests;
    size_t wbytes = 0;
    auto W = [&](bf16 **p, size_t elems, const std::string &name, const char *what) -> int {
        int r = s_alloc(m, (void **)p, elems * 2, what, err, errlen);
        if (r < 0)
            return r;
        wbytes += elems * 2;
        if (!name.empty())
            dests.push_back({name, *p, elems, false});
        return 0;
    };
    int r;
    if ((r = W(&m->embed, (size_t)c.V * c.D, "model.embed_tokens.weight", "weights: embed_tokens")) < 0)
        return r;
    if ((r = W(&m->final_norm, c.D, "model.norm.weight", "weights: final norm")) < 0)
        return r;
    if (c.tie)
        m->lm_head = m->embed;
    else if ((r = W(&m->lm_head, (size_t)c.V * c.D, "lm_head.weight", "weights: lm_head")) < 0)
        return r;
    m->lw.resize(c.L);
    for (int l = 0; l < c.L; l++) {
        layer_w &w = m->lw[l];
        std::string p = "model.layers." + std::to_string(l) + ".";
        char what[96];
        snprintf(what, sizeof what, "weights: layer %d attention", l);
        if ((r = W(&w.attn_norm, c.D, p + "input_layernorm.weight", what)) < 0 ||
            (r = W(&w.wqkv, (size_t)Nqkv * c.D, "", what)) < 0 ||
            (r = W(&w.q_norm, c.hd, p + "self_attn.q_norm.weight", what)) < 0 ||
            (r = W(&w.k_norm, c.hd, p + "self_attn.k_norm.weight", what)) < 0 ||
            (r = W(&w.wo, (size_t)c.D * c.Hq * c.hd, p + "self_attn.o_proj.weight", what)) < 0 ||
            (r = W(&w.ffn_norm, c.D, p + "post_attention_layernorm.weight", what)) < 0)
            return r;
        size_t qn = (size_t)c.Hq * c.hd * c.D, kn = (size_t)c.Hk * c.hd * c.D;
        dests.push_back({p + "self_attn.q_proj.weight", w.wqkv, qn, false});
        dests.push_back({p + "self_attn.k_proj.weight", w.wqkv + qn, kn, false});
        dests.push_back({p + "self_attn.v_proj.weight", w.wqkv + qn + kn, kn, false});
        if (m->tp_n > 1) { /* TP: this rank's heads (rows of q/k/v), their o_proj columns */
            size_t qr = (size_t)c.Hq * c.hd, kr = (size_t)c.Hk * c.hd;
            s_tp_slice(dests.end()[-3], (size_t)cf.Hq * c.hd, c.D, m->tp_rank * qr, qr, 0, c.D);
            s_tp_slice(dests.end()[-2], (size_t)cf.Hk * c.hd, c.D, m->tp_rank * kr, kr, 0, c.D);
            s_tp_slice(dests.end()[-1], (size_t)cf.Hk * c.hd, c.D, m->tp_rank * kr, kr, 0, c.D);
            for (dest &x : dests)
                if (x.ptr == w.wo)
                    s_tp_slice(x, c.D, (size_t)cf.Hq * c.hd, 0, c.D, m->tp_rank * qr, qr);
        }
        snprintf(what, sizeof what, "weights: layer %d experts", l);
        size_t ei = (size_t)c.I * c.D;
        size_t nel = m->ep ? (size_t)m->ne : (size_t)c.E; /* experts held here */
        if ((r = W(&w.router, (size_t)c.E * c.D, c.dense ? "" : p + "mlp.gate.weight", what)) < 0 ||
            (r = W(&w.gate, nel * ei, "", what)) < 0 || (r = W(&w.up, nel * ei, "", what)) < 0 ||
            (r = W(&w.down, nel * ei, "", what)) < 0)
            return r;
        if (c.dense) {
            MCHECK(cudaMemset(w.router, 0, (size_t)c.D * 2));
            dests.push_back({p + "mlp.gate_proj.weight", w.gate, ei, false});
            dests.push_back({p + "mlp.up_proj.weight", w.up, ei, false});
            dests.push_back({p + "mlp.down_proj.weight", w.down, ei, false});
        } else {
            for (int e = 0; e < c.E; e++) {
                std::string q = p + "mlp.experts." + std::to_string(e) + ".";
                /* TP expert mode: another rank's expert keeps an entry with ptr NULL (not read,
                   not generated) so the dummy seeds of the others match the 1-GPU model's */
                int le = e - (m->ep ? m->e0 : 0);
                bool here = le >= 0 && (size_t)le < nel;
                dests.push_back({q + "gate_proj.weight", here ? w.gate + le * ei : nullptr, ei, false});
                dests.push_back({q + "up_proj.weight", here ? w.up + le * ei : nullptr, ei, false});
                dests.push_back({q + "down_proj.weight", here ? w.down + le * ei : nullptr, ei, false});
            }
        }
        if (m->tp_n > 1 && !m->ep) /* TP column: rows [r·I/N, ..) of gate/up, the same columns of down */
            for (size_t k = dests.size() - 3 * (c.dense ? 1 : c.E); k < dests.size(); k += 3) {
                size_t r0 = (size_t)m->tp_rank * c.I;
                s_tp_slice(dests[k], cf.I, c.D, r0, c.I, 0, c.D);
                s_tp_slice(dests[k + 1], cf.I, c.D, r0, c.I, 0, c.D);
                s_tp_slice(dests[k + 2], c.D, cf.I, 0, c.D, r0, c.I);
            }
    }
    if (o.dummy) {
        uint64_t seed = o.seed * 1000003u;
        for (dest &x : dests) {
            if (!x.ptr) { /* another rank's expert: keep the seed sequence */
                ++seed;
                continue;
            }
            bool is_norm = s_ends_with(x.name, "norm.weight");
            float scale = is_norm ? 0.1f : (s_ends_with(x.name, "embed_tokens.weight") ? 0.5f : 0.03f);
            /* TP: replicated tensors get the same values on every rank, slices their own */
            uint64_t sd = ++seed ^ (x.cols ? (uint64_t)m->tp_rank * 0x9E3779B97F4A7C15ull : 0);
            RCHECK(ek_fill_random(m->s, x.ptr, x.elems, sd, scale, is_norm ? 1.0f : 0.0f));
        }
        MCHECK(cudaStreamSynchronize(m->s));
    } else {
        RCHECK(s_load_safetensors(m, dir, dests, err, errlen));
    }
    auto t1 = std::chrono::steady_clock::now();
    m->info.load_seconds = std::chrono::duration<double>(t1 - t0).count();
    m->info.weight_bytes = wbytes;
    m->info.load_gbps = wbytes / m->info.load_seconds / 1e9;
    size_t ei = (size_t)c.I * c.D;
    m->info.active_bytes = (size_t)c.V * c.D * 2 /* lm_head */ +
                           (size_t)c.L * ((size_t)Nqkv * c.D + (size_t)c.D * c.Hq * c.hd +
                                          (c.dense ? 0 : (size_t)c.E * c.D) +
                                          3 * ei * c.K / (m->ep ? m->tp_n : 1)) * 2;

    /* inv_freq as torch computes it: 1 / theta^(float(2j)/hd) in f32 */
    std::vector<float> inv(c.hd / 2);
    for (int j = 0; j < c.hd / 2; j++)
        inv[j] = 1.0f / powf(c.theta, (float)(2 * j) / (float)c.hd);
    RCHECK(s_alloc(m, (void **)&m->inv_freq, inv.size() * 4, "inv_freq", err, errlen));
    MCHECK(cudaMemcpy(m->inv_freq, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));

    RCHECK(s_alloc(m, &m->blas_ws, 32u << 20, "scratch: cuBLAS workspace", err, errlen));
    if (cublasSetWorkspace(m->blas, m->blas_ws, 32u << 20) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(m->blas, m->s) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS: workspace/stream setup failed");
        return -EIO;
    }
    m->kc.stream = m->s;
    m->kc.blas = m->blas;
    m->kc.conv = nullptr;
    m->kc.conv_bytes = 0;
    m->kc.gemv_max_rows = 8;
    /* scratch, then the KV pools from what is left (unless the caller sizes them later) */
    if (!o.weights_only) {
        RCHECK(s_scratch_init(m, err, errlen));
        RCHECK(s_kv_init(m, 0, err, errlen));
    }

    eng_cuda_model_info_t &in = m->info;
    in.vocab = c.V;
    in.hidden = c.D;
    in.n_layers = c.L;
    in.n_heads = cf.Hq; /* the full model's (TP shards: c holds the local shapes) */
    in.n_kv_heads = cf.Hk;
    in.head_dim = c.hd;
    in.n_experts = c.E;
    in.top_k = c.K;
    in.moe_inter = cf.I;
    in.tensor_parallel = m->tp_n > 1 ? (uint32_t)m->tp_n : 1;
    in.expert_parallel = m->ep ? 1 : 0;
    in.tp_reduce_f32 = m->red32 ? 1 : 0;
    in.block_size = o.block_size;
    m->cap_layer = -2;
    m->fuse = !getenv("OM_CUDA_NOFUSE");
    m->rope_tab_on = !(getenv("OM_CUDA_ROPE_TAB") && !strcmp(getenv("OM_CUDA_ROPE_TAB"), "0"));
    m->pdl = !getenv("OM_CUDA_NOPDL");
    {   /* default on: bit-identical to the old tail by construction (test_cuda_ops TAIL lines,
           test_cuda_model "decode tail" lines); "0" restores it for A/B */
        const char *e = getenv("OM_CUDA_TAIL");
        m->tail = !(e && !strcmp(e, "0"));
    }
    /* opt-in: on an H200 (2026-11-26) each of the three made batch-1 decode slower than the
       kernels it replaces (all three on 260 tok/s, all off 301; docs/engine.md) */
    m->fuse_rope = s_env_flag("OM_CUDA_FUSE_ROPE");
    m->fuse_moe = s_env_flag("OM_CUDA_FUSE_MOE");
    /* default: decode routing in k_moe_gu / k_moe_down_wk instead of the router's last block
       (H100, batch 1, ctx 512: 300.2 against 289.7 tok/s; docs/engine.md) */
    {
        /* 1: the expert kernels' top-k rounds by redux.sync; 2: by the router's shuffles; 0 off */
        const char *e = getenv("OM_CUDA_ROUTER_LOCAL");
        m->router_local = e && (!strcmp(e, "0") || !strcmp(e, "2")) ? atoi(e) : 1;
        const char *et = getenv("OM_CUDA_ROUTER_LOCAL_T");
        m->router_local_t = et && *et ? atoi(et) : 1;
    }
    {
        /* opt-in: on an H100 (2026-11-26) 255.8 against 263.9 tok/s at batch 1, ctx 512, and
           205.7 against 227.2 at ctx 4096 (the q rope moves onto attention's critical path) */
        m->attn_rope = s_env_flag("OM_CUDA_ATTN_ROPE");
    }
    {
        const char *e = getenv("OM_CUDA_OPROJ_KSPLIT");
        m->oproj_ks = e && *e ? atoi(e) : 1;
        if (m->oproj_ks != 2 && m->oproj_ks != 4 && m->oproj_ks != 8)
            m->oproj_ks = 1;
    }
    if (m->tp_n > 1) /* TP: PDL next to NCCL kernels in captured graphs is untested; opt in */
        m->pdl = m->pdl && getenv("OM_CUDA_TP_PDL") && !strcmp(getenv("OM_CUDA_TP_PDL"), "1");
    return 0;
}

/* Loads one model or, with tp_n > 1, shard tp_rank of tp_n (comm: its ncclComm_t). */
static int s_load(const char *dir, const eng_cuda_model_opts_t *opts, int tp_rank, int tp_n,
                  void *comm, eng_cuda_model_t **ret, char *err, size_t errlen) {
    if (!dir || !opts || !ret)
        return -EINVAL;
    eng_cuda_model *m = new eng_cuda_model();
    m->o = *opts;
    m->o.tensor_parallel = tp_n;
    m->tp_rank = tp_rank;
    m->tp_n = tp_n;
    m->comm = comm;
    if (!m->o.block_size)
        m->o.block_size = 16;
    if (!m->o.max_batch_tokens)
        m->o.max_batch_tokens = 4096;
    if (!m->o.max_seqs)
        m->o.max_seqs = 256;
    if (!m->o.max_ctx)
        m->o.max_ctx = 32768;
    if (m->o.max_seqs > m->o.max_batch_tokens)
        m->o.max_seqs = m->o.max_batch_tokens;
    int r = s_parse_config(dir, &m->c, err, errlen);
    m->cf = m->c;
    if (r >= 0 && tp_n > 1) { /* TP: local shapes; the split needs whole heads and columns */
        cfg &c = m->c;
        int mp = m->o.moe_parallel;
        m->ep = !c.dense && mp != ENG_CUDA_MOE_PAR_COLUMN;
        /* OM_CUDA_TP_REDUCE=bf16: the older bf16 all-reduce; fp32 (default) */
        const char *red = getenv("OM_CUDA_TP_REDUCE");
        m->red32 = !(red && !strcmp(red, "bf16"));
        if (mp != ENG_CUDA_MOE_PAR_DEFAULT && mp != ENG_CUDA_MOE_PAR_EXPERT &&
            mp != ENG_CUDA_MOE_PAR_COLUMN) {
            snprintf(err, errlen, "moe_parallel: %d is not expert (%d) or column (%d)", mp,
                     ENG_CUDA_MOE_PAR_EXPERT, ENG_CUDA_MOE_PAR_COLUMN);
            r = -EINVAL;
        } else if (red && *red && strcmp(red, "bf16") && strcmp(red, "fp32")) {
            snprintf(err, errlen, "OM_CUDA_TP_REDUCE: '%s' is not fp32 or bf16", red);
            r = -EINVAL;
        } else if (m->ep && c.E % tp_n) {
            snprintf(err, errlen,
                     "%s/config.json: num_experts: %d is not divisible by tensor_parallel %d "
                     "(moe_parallel expert puts E/N whole experts on each GPU; use moe_parallel "
                     "column)", dir, c.E, tp_n);
            r = -EINVAL;
        } else {
            const char *bad = c.Hk % tp_n ? "num_key_value_heads"
                              : !m->ep && c.I % tp_n
                                  ? (c.dense ? "intermediate_size" : "moe_intermediate_size")
                                  : nullptr;
            if (bad) {
                snprintf(err, errlen, "%s/config.json: %s: %d is not divisible by tensor_parallel %d",
                         dir, bad, c.Hk % tp_n ? c.Hk : c.I, tp_n);
                r = -EINVAL;
            } else {
                c.Hq /= tp_n;
                c.Hk /= tp_n;
                if (m->ep) {
                    m->ne = c.E / tp_n;
                    m->e0 = tp_rank * m->ne;
                } else {
                    c.I /= tp_n;
                }
            }
        }
    }
    if (r >= 0)
        r = s_model_init(m, dir, err, errlen);
    if (r < 0) {
        eng_cuda_model_free(m);
        return r;
    }
    *ret = m;
    return 0;
}

extern "C" int eng_cuda_model_load(const char *dir, const eng_cuda_model_opts_t *opts,
                                   eng_cuda_model_t **ret, char *err, size_t errlen) {
    if (!dir || !opts || !ret)
        return -EINVAL;
    if (opts->tensor_parallel < 0) {
        snprintf(err, errlen, "tensor_parallel: %d, must be >= 1", opts->tensor_parallel);
        return -EINVAL;
    }
    if (opts->tensor_parallel <= 1)
        return s_load(dir, opts, 0, 1, nullptr, ret, err, errlen);
    eng_cuda_model *m = new eng_cuda_model(); /* TP facade: every call goes to the group */
    m->o = *opts;
    int r = eng_cuda_tp_load(dir, opts, &m->tp, err, errlen);
    if (r < 0) {
        delete m;
        return r;
    }
    eng_cuda_tp_get_info(m->tp, &m->info);
    *ret = m;
    return 0;
}

extern "C" int eng_cuda_model_load_shard(const char *dir, const eng_cuda_model_opts_t *opts,
                                         int rank, int n, void *comm, eng_cuda_model_t **ret,
                                         char *err, size_t errlen) {
    if (n < 1 || rank < 0 || rank >= n || (n > 1 && !comm)) {
        snprintf(err, errlen, "tensor parallel: bad shard %d of %d", rank, n);
        return -EINVAL;
    }
    return s_load(dir, opts, rank, n, comm, ret, err, errlen);
}

extern "C" void *eng_cuda_model_stream(eng_cuda_model_t *m) {
    return m ? (void *)m->s : nullptr;
}

extern "C" void eng_cuda_model_set_tp_async(eng_cuda_model_t *m, bool on) {
    if (m)
        m->tp_async = on;
}

extern "C" void eng_cuda_model_set_tp_ar(eng_cuda_model_t *m, void *ar) {
    if (!m || m->tp_n < 2 || !m->red32)
        return;
    m->ar = (ek_ar *)ar;
    m->info.tp_ar_rows = m->ar ? (uint32_t)(m->ar->cap / m->c.D) : 0;
    /* PDL: on with the one-shot all-reduce (no NCCL kernel in a decode graph; OM_CUDA_TP_PDL=0
       turns it off), opt-in (OM_CUDA_TP_PDL=1) next to NCCL's */
    const char *e = getenv("OM_CUDA_TP_PDL");
    m->pdl = !getenv("OM_CUDA_NOPDL") && (e && *e ? !strcmp(e, "1") : m->ar != nullptr);
}

extern "C" void eng_cuda_model_get_info(const eng_cuda_model_t *m, eng_cuda_model_info_t *ret) {
    if (m->tp) {
        eng_cuda_tp_get_info(m->tp, ret);
        return;
    }
    *ret = m->info;
}

extern "C" int eng_cuda_model_reserve(eng_cuda_model_t *m, uint32_t max_batch_tokens,
                                      uint32_t max_seqs, uint32_t max_ctx, char *err,
                                      size_t errlen) {
    if (!m || !max_batch_tokens || !max_seqs || !max_ctx) {
        snprintf(err, errlen, "reserve: max_batch_tokens, max_seqs and max_ctx must be >= 1");
        return -EINVAL;
    }
    if (m->tp)
        return eng_cuda_tp_reserve(m->tp, max_batch_tokens, max_seqs, max_ctx, err, errlen);
    if (max_seqs > max_batch_tokens)
        max_seqs = max_batch_tokens;
    if (m->meta_dev && max_batch_tokens <= m->o.max_batch_tokens && max_seqs <= m->o.max_seqs &&
        max_ctx <= m->o.max_ctx)
        return 0;
    if (m->meta_dev) { /* grow: never shrink what an earlier reserve asked for */
        max_batch_tokens = std::max(max_batch_tokens, m->o.max_batch_tokens);
        max_seqs = std::max(max_seqs, m->o.max_seqs);
        max_ctx = std::max(max_ctx, m->o.max_ctx);
    }
    s_scratch_free(m);
    m->o.max_batch_tokens = max_batch_tokens;
    m->o.max_seqs = max_seqs;
    m->o.max_ctx = max_ctx;
    int r = s_scratch_init(m, err, errlen);
    if (r < 0)
        s_scratch_free(m);
    return r;
}

extern "C" int eng_cuda_model_alloc_kv(eng_cuda_model_t *m, uint32_t n_blocks, uint32_t block_size,
                                       char *err, size_t errlen) {
    if (!m || !block_size) {
        snprintf(err, errlen, "KV cache: block_size must be >= 1");
        return -EINVAL;
    }
    if (m->tp)
        return eng_cuda_tp_alloc_kv(m->tp, n_blocks, block_size, err, errlen);
    s_kv_free(m);
    if (block_size != m->o.block_size && m->meta_dev) {
        /* block tables are max_ctx / block_size long: re-lay the step buffers first */
        s_scratch_free(m);
        m->o.block_size = block_size;
        RCHECK(s_scratch_init(m, err, errlen));
    }
    m->o.block_size = block_size;
    m->info.block_size = block_size;
    return s_kv_init(m, (int64_t)n_blocks, err, errlen);
}

extern "C" uint64_t eng_cuda_model_kv_bytes_per_token(const eng_cuda_model_t *m) {
    if (m && m->tp)
        return eng_cuda_tp_kv_bytes_per_token(m->tp); /* per GPU */
    return m ? (uint64_t)2 * m->c.L * m->c.Hk * m->c.hd * 2 : 0;
}

extern "C" float *eng_cuda_model_logits(eng_cuda_model_t *m) {
    if (m && m->tp)
        return eng_cuda_tp_logits(m->tp);
    return m ? m->logits : nullptr;
}

extern "C" int eng_cuda_model_sync(eng_cuda_model_t *m) {
    if (m->tp)
        return eng_cuda_tp_sync(m->tp);
    char err[8];
    size_t errlen = sizeof err;
    MCHECK(cudaStreamSynchronize(m->s));
    return 0;
}

extern "C" int eng_cuda_model_capture_hidden(eng_cuda_model_t *m, int layer, float *ret_hidden) {
    if (m->tp)
        return eng_cuda_tp_capture_hidden(m->tp, layer, ret_hidden);
    m->cap_layer = ret_hidden ? layer : -2;
    m->cap_host = ret_hidden;
    return 0;
}

extern "C" int eng_cuda_model_trace(eng_cuda_model_t *m, uint32_t max_tokens, float *ret_resid,
                                    int32_t *ret_ids) {
    if (!m)
        return -EINVAL;
    if (m->tp)
        return eng_cuda_tp_trace(m->tp, max_tokens, ret_resid, ret_ids);
    m->trace_h = ret_resid;
    m->trace_ids = ret_resid ? ret_ids : nullptr;
    m->trace_T = ret_resid ? (int)max_tokens : 0;
    return 0;
}

/* --- forward ------------------------------------------------------------------------------ */

struct step {
    int T, S, R;            /* tokens, sequences, logits rows */
    int n_tiles;            /* prefill tiles (0: decode attention path) */
    int splits;             /* decode attention key splits */
    bool attn_tc;           /* decode attention on the tensor-core kernel (large batches) */
    bool decode;            /* one new token per sequence (ek_attention_decode) */
};

/* OM_CUDA_ATTN_TC: "0" keeps the older attention kernels (decode and prefill); a number N > 0
 * is the smallest decode batch (tokens) that uses the tensor-core decode kernel (default 16). */
static int s_attn_tc_min_t() {
    static int v = -2;
    if (v == -2) {
        const char *e = getenv("OM_CUDA_ATTN_TC");
        v = e && *e ? atoi(e) : 16;
        if (v < 0)
            v = 0;
    }
    return v; /* 0: off */
}

/* TP: in-place sum of a shard's partial (n) over all ranks, on the shard's stream: bf16 buf,
 * or (red32) the f32 partial in m->delta32, summed in f32 and rounded once into buf; parity >= 0:
 * the f32 partial in m->ar->buf[parity], summed by the one-shot all-reduce into buf. */
static int s_tp_allreduce(eng_cuda_model *m, bf16 *buf, size_t n, int parity, char *err,
                          size_t errlen) {
    if (parity >= 0) {
        int r = ek_ar_sum(m->s, m->ar, parity, buf, n);
        if (r < 0)
            snprintf(err, errlen, "tensor parallel rank %d: one-shot all-reduce of %zu: %s",
                     m->tp_rank, n, r == -EINVAL ? "bad size" : eng_cuda_last_error());
        return r;
    }
    int r = m->red32 ? eng_nccl_allreduce_sum(m->comm, m->delta32, n, 1, m->s)
                     : eng_nccl_allreduce_sum(m->comm, buf, n, 0, m->s);
    if (r < 0) {
        snprintf(err, errlen, "tensor parallel rank %d: %s", m->tp_rank, eng_nccl_last_error());
        return r;
    }
    return m->red32 ? ek_f32_to_bf16(m->s, buf, m->delta32, n) : 0;
}

static inline float s_bf16_round(float v) { /* round to nearest even, as __float2bfloat16 */
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    else
        u &= 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

/* eng_cuda_model_trace: the residual after layer l = bf16(cur + delta), and the layer's ids. */
static int s_trace_layer(eng_cuda_model *m, int l, int T, const bf16 *cur, char *err,
                         size_t errlen) {
    const cfg &c = m->c;
    std::vector<uint16_t> h((size_t)T * c.D), dl((size_t)T * c.D);
    MCHECK(cudaStreamSynchronize(m->s));
    MCHECK(cudaMemcpy(h.data(), cur, h.size() * 2, cudaMemcpyDeviceToHost));
    MCHECK(cudaMemcpy(dl.data(), m->delta, dl.size() * 2, cudaMemcpyDeviceToHost));
    float *out = m->trace_h + (size_t)l * T * c.D;
    for (size_t i = 0; i < h.size(); i++) {
        uint32_t a = (uint32_t)h[i] << 16, b = (uint32_t)dl[i] << 16;
        float fa, fb;
        memcpy(&fa, &a, 4);
        memcpy(&fb, &b, 4);
        out[i] = s_bf16_round(fa + fb);
    }
    if (m->trace_ids)
        MCHECK(cudaMemcpy(m->trace_ids + (size_t)l * T * c.K, m->ms.ids, (size_t)T * c.K * 4,
                          cudaMemcpyDeviceToHost));
    return 0;
}

/* The device work of one step; pure function of (m, st) and the uploaded metadata. */
static int s_run(eng_cuda_model *m, const step &st, char *err, size_t errlen) {
    const cfg &c = m->c;
    cudaStream_t s = m->s;
    const int T = st.T;
    const int Nqkv = (c.Hq + 2 * c.Hk) * c.hd;
    const int32_t *md = m->meta_dev;
    const meta_off &mo = m->mo;
    const size_t lstride = (size_t)m->n_slots * c.Hk * c.hd;
    const float scale = 1.0f / sqrtf((float)c.hd);
    const int e0 = m->ep ? m->e0 : 0, ne = m->ep ? m->ne : 0; /* TP expert mode: local experts */
    const bool red32 = m->tp_n > 1 && m->red32;
    /* TP: the one-shot all-reduce when the step fits its buffers, else NCCL */
    const bool car = red32 && m->ar && (size_t)T * c.D <= m->ar->cap && c.D % 4 == 0;
    float *part_attn = car ? m->ar->buf[0] : m->delta32;
    float *part_mlp = car ? m->ar->buf[1] : m->delta32;
    const bool trace = m->trace_h && T <= m->trace_T;
    /* decode path (T <= 8): add+RMSNorm fused into the QKV GEMV and into the router (with
       top-k), residual ping-pong between h and h2; otherwise separate norm kernels in place. */
    const bool fused = m->fuse && T <= 8 && ek_gemv_norm_supported(T, c.D);
    /* ... and QK-norm + RoPE + KV write in the QKV GEMV's epilogue (one launch less per layer) */
    const bool fuse_rope = fused && m->fuse_rope && ek_gemv_norm_rope_supported(T, c.D, c.hd);
    /* ... or, in decode steps on k_attn_dec, inside the decode attention kernel (q-norm + RoPE
       per block, the new token's k-norm + RoPE + KV write by the block holding its position) */
    int *attn_cnt = m->fuse ? m->attn_cnt : nullptr;
    const bool attn_rope = m->attn_rope && !fuse_rope && st.decode && st.n_tiles == 0 &&
                           !st.attn_tc &&
                           ek_attention_decode_rope_supported(c.Hq, c.Hk, c.hd, st.splits,
                                                              m->partial, attn_cnt);
    /* profiling only: kernels left out of decode steps (eng_cuda_model_opts_t.profile_skip) */
    const unsigned sk = fused && st.decode ? m->o.profile_skip : 0;
    bf16 *cur = m->h, *oth = m->h2;
    /* steps on the unfused path (T > 8: prefill, large batches): the cos/sin table once */
    const float *rtab = !fused && m->rope_tab_on && m->rope_tab && !(sk & ENG_CUDA_SKIP_ROPE)
                            ? m->rope_tab
                            : nullptr;
    if (rtab)
        RCHECK(ek_rope_table<bf16>(s, m->rope_tab, md + mo.pos3, m->inv_freq, T, c.hd, c.sec[1],
                                   c.sec[2]));
    struct pdl_guard {
        explicit pdl_guard(bool on) { ek_pdl = on; }
        ~pdl_guard() { ek_pdl = false; }
    } pg(fused && m->pdl);
    RCHECK(ek_embed<bf16>(s, cur, md + mo.tokens, m->embed, T, c.D, c.V));
    for (int l = 0; l < c.L; l++) {
        const layer_w &w = m->lw[l];
        bf16 *kp = m->kv + (size_t)l * lstride;
        bf16 *vp = m->kv + (size_t)(c.L + l) * lstride;
        if (sk & ENG_CUDA_SKIP_QKV) {
            /* profiling: left out */
        } else if (fuse_rope) {
            RCHECK(ek_gemv_norm_rope(s, m->qkv, w.wqkv, T, c.D, cur, l == 0 ? nullptr : m->delta,
                                     oth, w.attn_norm, c.eps, c.Hq, c.Hk, c.hd, w.q_norm,
                                     w.k_norm, md + mo.pos3, m->inv_freq, c.sec[1], c.sec[2], kp,
                                     vp, md + mo.slots, m->rope_cnt));
            std::swap(cur, oth);
        } else if (fused) {
            RCHECK(ek_gemv_norm(s, m->qkv, w.wqkv, T, Nqkv, c.D, cur, l == 0 ? nullptr : m->delta,
                                oth, w.attn_norm, c.eps));
            std::swap(cur, oth);
        } else {
            if (l == 0)
                RCHECK(ek_add_rmsnorm<bf16, bf16>(s, m->xn, nullptr, cur, w.attn_norm, T, c.D, c.eps));
            else
                RCHECK(ek_add_rmsnorm<bf16, bf16>(s, m->xn, cur, m->delta, w.attn_norm, T, c.D, c.eps));
            RCHECK(ek_matmul<bf16, bf16>(&m->kc, m->qkv, m->xn, w.wqkv, T, Nqkv, c.D));
        }
        if (!fuse_rope && !attn_rope && !(sk & ENG_CUDA_SKIP_ROPE))
            RCHECK(ek_qk_norm_rope<bf16, bf16, bf16>(
                s, m->qkv, Nqkv, m->qkv + c.Hq * c.hd, Nqkv, w.q_norm, w.k_norm, md + mo.pos3,
                m->inv_freq, T, c.Hq, c.Hk, c.hd, c.eps, c.sec[1], c.sec[2], kp, vp,
                m->qkv + (c.Hq + c.Hk) * c.hd, Nqkv, md + mo.slots, rtab));
        if (sk & ENG_CUDA_SKIP_ATTN) {
            /* profiling: left out */
        } else if (st.n_tiles > 0 && s_attn_tc_min_t() > 0 &&
                   ek_attention_tc_supported(c.Hq, c.Hk, c.hd))
            RCHECK((ek_attention_prefill_tc<bf16, bf16>(
                s, m->attn, m->qkv, kp, vp, md + mo.tok_pos, md + mo.bt, md + mo.tiles,
                st.n_tiles, c.Hq, c.Hk, c.hd, m->max_blocks, (int)m->o.block_size, scale, Nqkv)));
        else if (st.n_tiles > 0)
            RCHECK(ek_attention_prefill(s, m->attn, m->qkv, kp, vp, md + mo.tok_pos, md + mo.bt,
                                        md + mo.tiles, st.n_tiles, c.Hq, c.Hk, c.hd, m->max_blocks,
                                        (int)m->o.block_size, scale, Nqkv));
        else if (st.attn_tc)
            RCHECK((ek_attention_tc<bf16, bf16>(s, m->attn, m->qkv, kp, vp, md + mo.tok_seq,
                                                md + mo.tok_pos, md + mo.bt, T, c.Hq, c.Hk, c.hd,
                                                m->max_blocks, (int)m->o.block_size, scale,
                                                st.splits, m->partial, Nqkv, m->attn_cnt)));
        else if (attn_rope) {
            const ek_dec_rope rp = {w.q_norm, w.k_norm, md + mo.pos3, m->inv_freq,
                                    md + mo.slots, c.eps, c.sec[1], c.sec[2], nullptr, nullptr};
            RCHECK(ek_attention_decode_rope(s, m->attn, m->qkv, kp, vp, md + mo.tok_seq,
                                            md + mo.tok_pos, md + mo.bt, T, c.Hq, c.Hk, c.hd,
                                            m->max_blocks, (int)m->o.block_size, scale,
                                            st.splits, m->partial, Nqkv, attn_cnt, &rp));
        } else
            /* n_tiles == 0 with a flash-capable hd means a decode step: one new token per
               sequence, so the decode kernel may read earlier K/V rows before its PDL wait */
            RCHECK(st.decode
                       ? ek_attention_decode(s, m->attn, m->qkv, kp, vp, md + mo.tok_seq,
                                             md + mo.tok_pos, md + mo.bt, T, c.Hq, c.Hk, c.hd,
                                             m->max_blocks, (int)m->o.block_size, scale,
                                             st.splits, m->partial, Nqkv,
                                             m->fuse ? m->attn_cnt : nullptr)
                       : (ek_attention<bf16, bf16, bf16>(s, m->attn, m->qkv, kp, vp,
                                                         md + mo.tok_seq, md + mo.tok_pos,
                                                         md + mo.bt, T, c.Hq, c.Hk, c.hd,
                                                         m->max_blocks, (int)m->o.block_size,
                                                         scale, st.splits, m->partial, Nqkv,
                                                         m->fuse ? m->attn_cnt : nullptr)));
        if (sk & ENG_CUDA_SKIP_OPROJ) {
            /* profiling: left out */
        } else if (red32)
            RCHECK(ek_matmul<bf16, float>(&m->kc, part_attn, m->attn, w.wo, T, c.D, c.Hq * c.hd));
        else if (fused && m->oproj_ks > 1 &&
                 ek_gemv_ks_supported(T, c.Hq * c.hd, m->oproj_ks, m->attn, w.wo))
            RCHECK(ek_gemv_ks(s, m->delta, m->attn, w.wo, T, c.D, c.Hq * c.hd, m->oproj_ks));
        else
            RCHECK(ek_matmul<bf16, bf16>(&m->kc, m->delta, m->attn, w.wo, T, c.D, c.Hq * c.hd));
        if (m->tp_n > 1) /* TP: o_proj partial sums of this rank's heads */
            RCHECK(s_tp_allreduce(m, m->delta, (size_t)T * c.D, car ? 0 : -1, err, errlen));
        if (fused) {
            int *fcnt = m->fuse_moe ? m->moe_cnt : nullptr;
            /* OM_CUDA_ROUTER_LOCAL: the router writes logits only; k_moe_gu / k_moe_down_wk run
               the top-k themselves (not with k_moe_fused, nor with the router left out) */
            const int rl = m->router_local && T <= m->router_local_t &&
                                   !(sk & ENG_CUDA_SKIP_ROUTER) &&
                                   !(sk & ENG_CUDA_SKIP_MOE) &&
                                   ek_moe_route_local_ok(T, c.D, c.I, c.E, c.K, m->o.moe_mode,
                                                         fcnt != nullptr)
                               ? m->router_local
                               : 0;
            if (!(sk & ENG_CUDA_SKIP_ROUTER)) {
                RCHECK(ek_router_fused(s, &m->ms, m->router_cnt, w.router, T, c.E, c.D, c.K,
                                       c.norm_topk, cur, m->delta, oth, w.ffn_norm, c.eps, m->xn,
                                       rl == 0));
                std::swap(cur, oth);
            }
            if (sk & ENG_CUDA_SKIP_MOE) {
                /* profiling: left out */
            } else if (red32)
                RCHECK(ek_moe_experts<bf16, float>(&m->kc, part_mlp, m->xn, w.gate, w.up,
                                                   w.down, T, c.D, c.I, c.E, c.K, m->o.moe_mode,
                                                   &m->ms, e0, ne, fcnt, rl, c.norm_topk));
            else
                RCHECK(ek_moe_experts<bf16>(&m->kc, m->delta, m->xn, w.gate, w.up, w.down, T,
                                            c.D, c.I, c.E, c.K, m->o.moe_mode, &m->ms, e0, ne,
                                            fcnt, rl, c.norm_topk));
        } else {
            RCHECK(ek_add_rmsnorm<bf16, bf16>(s, m->xn, cur, m->delta, w.ffn_norm, T, c.D, c.eps));
            if (red32)
                RCHECK(ek_moe<bf16, float>(&m->kc, part_mlp, m->xn, w.router, w.gate, w.up,
                                           w.down, T, c.D, c.I, c.E, c.K, c.norm_topk,
                                           m->o.moe_mode, &m->ms, e0, ne));
            else
                RCHECK(ek_moe<bf16>(&m->kc, m->delta, m->xn, w.router, w.gate, w.up, w.down, T,
                                    c.D, c.I, c.E, c.K, c.norm_topk, m->o.moe_mode, &m->ms, e0,
                                    ne));
        }
        /* TP: MLP/MoE partial sums (column: this rank's intermediate columns; expert: its
           experts' weighted outputs, zero for tokens routed to none of them) */
        if (m->tp_n > 1)
            RCHECK(s_tp_allreduce(m, m->delta, (size_t)T * c.D, car ? 1 : -1, err, errlen));
        if (trace)
            RCHECK(s_trace_layer(m, l, T, cur, err, errlen));
    }
    /* decode tail (T <= 8): final add + RMSNorm of only the logits rows (one PDL kernel instead
       of norm + gather), the lm_head GEMV writing per-block argmax partials, one reduce kernel
       (instead of the two-kernel ek_argmax). Not with the final-norm capture (it reads xn). */
    const bool tail = fused && m->tail && m->cap_layer != c.L && st.R <= 8 && m->tail_pv;
    if (tail) {
        RCHECK(ek_add_rmsnorm_rows(s, m->xl, cur, m->delta, m->final_norm, md + mo.logit_rows,
                                   st.R, c.D, T, c.eps));
        RCHECK(ek_lm_head_argmax(s, m->logits, m->ids_dev, m->xl, m->lm_head, st.R, c.V, c.D,
                                 m->tail_pv, m->tail_pi));
        return 0;
    }
    RCHECK(ek_add_rmsnorm<bf16, bf16>(s, m->xn, cur, m->delta, m->final_norm, T, c.D, c.eps));
    RCHECK(ek_get_rows<bf16>(s, m->xl, m->xn, md + mo.logit_rows, st.R, c.D, T));
    RCHECK(ek_matmul<bf16, float>(&m->kc, m->logits, m->xl, m->lm_head, st.R, c.V, c.D));
    RCHECK(ek_argmax(s, m->ids_dev, m->logits, st.R, c.V, m->amax_v, m->amax_i));
    return 0;
}

/* Hidden-state capture for debugging/parity (eager only): re-runs the step up to a layer. */
static int s_capture(eng_cuda_model *m, const step &st, char *err, size_t errlen) {
    /* The residual stream after layer l is h + delta (not yet added); compute it on the host. */
    const cfg &c = m->c;
    std::vector<uint16_t> h((size_t)st.T * c.D), dl((size_t)st.T * c.D);
    MCHECK(cudaStreamSynchronize(m->s));
    if (m->cap_layer == c.L) {
        MCHECK(cudaMemcpy(h.data(), m->xn, h.size() * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < h.size(); i++) {
            uint32_t u = (uint32_t)h[i] << 16;
            memcpy(&m->cap_host[i], &u, 4);
        }
    }
    return 0;
}

static int s_bucket(int n) {
    static const int b[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    for (int x : b)
        if (n <= x)
            return x;
    return -1;
}

/* one step; nosync: return with the step in flight on m->s (eng_cuda_model_forward_async) */
static int s_forward(eng_cuda_model_t *m, const eng_batch_t *b, float *ret_logits,
                     int32_t *ret_ids, bool nosync, char *err, size_t errlen) {
    if (!m || !b || !b->seqs || b->n_seqs == 0) {
        snprintf(err, errlen, "batch: empty");
        return -EINVAL;
    }
    if (m->tp)
        return eng_cuda_tp_forward(m->tp, b, ret_logits, ret_ids, err, errlen);
    if (s_sticky) {
        snprintf(err, errlen, "CUDA context lost: %s", eng_cuda_last_error());
        return -EIO;
    }
    if (!m->kv || !m->meta_dev) {
        snprintf(err, errlen, "%s", !m->kv ? "no KV cache allocated (eng_cuda_model_alloc_kv)"
                                           : "no step buffers (eng_cuda_model_reserve)");
        return -EINVAL;
    }
    const cfg &c = m->c;
    const int bs = (int)m->o.block_size;
    int T = 0, R = 0, max_nt = 0, max_len = 0;
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const eng_batch_seq_t &q = b->seqs[i];
        if (q.n_tokens == 0 || !q.tokens) {
            snprintf(err, errlen, "batch.seqs[%u].n_tokens: must be >= 1", i);
            return -EINVAL;
        }
        uint64_t len = (uint64_t)q.n_past + q.n_tokens;
        if (len > m->o.max_ctx) {
            snprintf(err, errlen, "batch.seqs[%u]: %llu tokens exceed max_ctx %u", i,
                     (unsigned long long)len, m->o.max_ctx);
            return -E2BIG;
        }
        if (!q.block_table || (uint64_t)q.n_blocks * bs < len) {
            snprintf(err, errlen, "batch.seqs[%u].block_table: %u blocks do not cover %llu tokens",
                     i, q.n_blocks, (unsigned long long)len);
            return -EINVAL;
        }
        for (uint32_t j = 0; j < (len + bs - 1) / bs; j++)
            if (q.block_table[j] < 0 || q.block_table[j] >= m->n_blocks) {
                snprintf(err, errlen, "batch.seqs[%u].block_table[%u]: block %d out of range [0, %d)",
                         i, j, q.block_table[j], m->n_blocks);
                return -EINVAL;
            }
        for (uint32_t j = 0; j < q.n_tokens; j++)
            if (q.tokens[j] < 0 || q.tokens[j] >= c.V) {
                snprintf(err, errlen, "batch.seqs[%u].tokens[%u]: id %d out of range [0, %d)", i, j,
                         q.tokens[j], c.V);
                return -EINVAL;
            }
        T += q.n_tokens;
        R += q.want_logits ? 1 : 0;
        if ((int)q.n_tokens > max_nt)
            max_nt = q.n_tokens;
        if ((int)len > max_len)
            max_len = (int)len;
    }
    if ((uint32_t)T != b->n_tokens || (uint32_t)R != b->n_logits) {
        snprintf(err, errlen, "batch.n_tokens/n_logits: %u/%u, the sequences hold %d/%d",
                 b->n_tokens, b->n_logits, T, R);
        return -EINVAL;
    }
    if (T > (int)m->o.max_batch_tokens || b->n_seqs > m->o.max_seqs) {
        snprintf(err, errlen, "batch: %d tokens / %u sequences exceed max_batch_tokens %u / max_seqs %u",
                 T, b->n_seqs, m->o.max_batch_tokens, m->o.max_seqs);
        return -E2BIG;
    }
    bool decode = max_nt == 1;
    int bucket = decode && !m->o.no_graphs && m->cap_layer == -2 && !m->trace_h ? s_bucket(T) : -1;
    if (bucket > (int)m->o.max_seqs)
        bucket = -1;
    int Tp = bucket > 0 ? bucket : T;  /* padded tokens (= sequences in decode) */
    int Sp = bucket > 0 ? bucket : (int)b->n_seqs;

    /* metadata */
    int32_t *mh = m->meta_host;
    const meta_off &mo = m->mo;
    int t = 0, r = 0, n_tiles = 0;
    const int trash_slot = m->n_blocks * bs;
    std::vector<int> logit_tok;
    for (uint32_t i = 0; i < b->n_seqs; i++) {
        const eng_batch_seq_t &q = b->seqs[i];
        int32_t *btrow = mh + mo.bt + (size_t)i * m->max_blocks;
        uint32_t nbk = (q.n_past + q.n_tokens + bs - 1) / bs;
        memcpy(btrow, q.block_table, nbk * 4);
        if (!decode)
            for (uint32_t j0 = 0; j0 < q.n_tokens; j0 += 64) {
                int32_t *tl = mh + mo.tiles + 3 * n_tiles++;
                tl[0] = t + j0;
                tl[1] = (int)(q.n_tokens - j0 < 64 ? q.n_tokens - j0 : 64);
                tl[2] = (int)i;
            }
        for (uint32_t j = 0; j < q.n_tokens; j++, t++) {
            int p = (int)(q.n_past + j);
            mh[mo.tokens + t] = q.tokens[j];
            mh[mo.tok_seq + t] = (int)i;
            mh[mo.tok_pos + t] = p;
            mh[mo.slots + t] = q.block_table[p / bs] * bs + p % bs;
            for (int rr = 0; rr < 3; rr++)
                mh[mo.pos3 + (size_t)rr * Tp + t] =
                    q.positions ? q.positions[(size_t)rr * q.n_tokens + j] : p;
        }
        if (q.want_logits) {
            logit_tok.push_back(t - 1);
            mh[mo.logit_rows + r++] = t - 1;
        }
    }
    /* padding tokens (graph buckets): token 0 at position 0 of a trash sequence */
    for (; t < Tp; t++) {
        int i = t;
        mh[mo.tokens + t] = 0;
        mh[mo.tok_seq + t] = i;
        mh[mo.tok_pos + t] = 0;
        mh[mo.slots + t] = trash_slot;
        for (int rr = 0; rr < 3; rr++)
            mh[mo.pos3 + (size_t)rr * Tp + t] = 0;
        mh[mo.bt + (size_t)i * m->max_blocks] = m->n_blocks;
    }
    int Rp = R;
    if (bucket > 0) {
        for (; r < Tp; r++)
            mh[mo.logit_rows + r] = r < T ? r : 0;
        Rp = Tp;
        /* in decode every real sequence's row r is token r: rows listed above map want_logits
           sequences in order; keep that order for the first R rows */
    }
    bool use_flash = !decode && ek_attention_prefill_supported(c.hd);
    step st;
    st.T = Tp;
    st.S = Sp;
    st.R = Rp;
    st.n_tiles = use_flash ? n_tiles : 0;
    st.decode = decode;
    if (bucket > 0) {
        st.splits = Tp <= 4 ? 32 : (Tp <= 64 ? 16 : 8);
        /* OM_CUDA_ATTN_SPLITS=n (1..32): upper bound on the decode key splits of batch <= 4
           graphs (bench sweeps; the hd-128 kernel uses ceil(len / 64) of them at most) */
        static const char *split_s = getenv("OM_CUDA_ATTN_SPLITS");
        static const int split_env = split_s ? atoi(split_s) : 0;
        if (Tp <= 4 && split_env >= 1 && split_env <= 32)
            st.splits = split_env;
    }
    else {
        int want = (max_len + 63) / 64;
        int cap = T <= 4 ? 32 : (T <= 64 ? 16 : 8);
        st.splits = want < 1 ? 1 : (want > cap ? cap : want);
        if (st.splits > m->max_splits)
            st.splits = m->max_splits;
    }
    /* large decode batches: the tensor-core kernel, with its own split rule (the partial buffer
       holds max(8·T_max, 1024) token-splits, see s_scratch_init; graph buckets: length unknown) */
    st.attn_tc = !use_flash && s_attn_tc_min_t() > 0 && Tp >= s_attn_tc_min_t() &&
                 ek_attention_tc_supported(c.Hq, c.Hk, c.hd);
    if (st.attn_tc) {
        const int tmax = (int)m->o.max_batch_tokens;
        st.splits = ek_attention_tc_splits(Tp, c.Hk, bucket > 0 ? -1 : max_len, m->max_splits,
                                           8 * tmax > 1024 ? 8 * tmax : 1024);
    }
    size_t up_n = mo.bt + (size_t)Sp * m->max_blocks;
    MCHECK(cudaMemcpyAsync(m->meta_dev, mh, up_n * 4, cudaMemcpyHostToDevice, m->s));

    if (bucket > 0) {
        graph_ent *g = nullptr;
        for (graph_ent &x : m->graphs)
            if (x.bucket == bucket)
                g = &x;
        if (!g) {
            m->graphs.push_back({bucket, nullptr, 0});
            g = &m->graphs.back();
        }
        if (!g->exec && g->uses >= 1) {
            cudaGraph_t graph;
            MCHECK(cudaStreamBeginCapture(m->s, cudaStreamCaptureModeThreadLocal));
            int rr2 = s_run(m, st, err, errlen);
            cudaError_t ce = cudaStreamEndCapture(m->s, &graph);
            if (rr2 < 0)
                return rr2;
            MCHECK(ce);
            MCHECK(cudaGraphInstantiate(&g->exec, graph, 0));
            cudaGraphDestroy(graph);
        }
        g->uses++;
        if (g->exec)
            MCHECK(cudaGraphLaunch(g->exec, m->s));
        else {
            int rr2 = s_run(m, st, err, errlen);
            if (rr2 < 0)
                return rr2;
        }
    } else {
        int rr2 = s_run(m, st, err, errlen);
        if (rr2 < 0)
            return rr2;
        if (m->cap_layer == c.L && m->cap_host) {
            rr2 = s_capture(m, st, err, errlen);
            if (rr2 < 0)
                return rr2;
        }
    }
    if (ret_ids)
        MCHECK(cudaMemcpyAsync(ret_ids, m->ids_dev, (size_t)R * 4, cudaMemcpyDeviceToHost, m->s));
    if (ret_logits)
        MCHECK(cudaMemcpyAsync(ret_logits, m->logits, (size_t)R * c.V * 4, cudaMemcpyDeviceToHost,
                               m->s));
    if (m->tp_async) /* TP: the group waits for the stream with its watchdog (eng_cuda_tp.cu) */
        return 0;
    if (nosync) /* the caller queues its work behind the step and synchronises m->s */
        return 0;
    MCHECK(cudaStreamSynchronize(m->s));
    return 0;
}

extern "C" int eng_cuda_model_forward(eng_cuda_model_t *m, const eng_batch_t *b, float *ret_logits,
                                      int32_t *ret_ids, char *err, size_t errlen) {
    return s_forward(m, b, ret_logits, ret_ids, false, err, errlen);
}

extern "C" int eng_cuda_model_forward_async(eng_cuda_model_t *m, const eng_batch_t *b,
                                            void **ret_stream, char *err, size_t errlen) {
    if (!ret_stream) {
        snprintf(err, errlen, "ret_stream: NULL");
        return -EINVAL;
    }
    if (m && m->tp) { /* the group synchronises its ranks itself: the step is complete */
        int r = s_forward(m, b, nullptr, nullptr, false, err, errlen);
        if (r == 0)
            *ret_stream = nullptr;
        return r;
    }
    int r = s_forward(m, b, nullptr, nullptr, true, err, errlen);
    if (r == 0)
        *ret_stream = (void *)m->s;
    return r;
}

extern "C" int eng_cuda_model_set_moe_mode(eng_cuda_model_t *m, int mode) {
    if (!m || mode < 0 || mode > 2)
        return -EINVAL;
    if (m->tp)
        return eng_cuda_tp_set_moe_mode(m->tp, mode);
    cudaStreamSynchronize(m->s);
    for (graph_ent &g : m->graphs)
        if (g.exec)
            cudaGraphExecDestroy(g.exec);
    m->graphs.clear();
    m->o.moe_mode = mode;
    return 0;
}

extern "C" int eng_cuda_model_measure_comm(eng_cuda_model_t *m, uint32_t rows, double *ret_step_ms,
                                           double *ret_allreduce_us, char *err, size_t errlen) {
    if (!m || !ret_step_ms || !ret_allreduce_us)
        return -EINVAL;
    if (m->tp)
        return eng_cuda_tp_measure_comm(m->tp, rows, ret_step_ms, ret_allreduce_us, err, errlen);
    *ret_step_ms = 0; /* one GPU: no communication */
    *ret_allreduce_us = 0;
    return 0;
}

extern "C" int eng_cuda_measure_d2d_gbps(int device, size_t bytes, double *ret_gbps) {
    char err[8];
    size_t errlen = sizeof err;
    void *a = nullptr, *b = nullptr;
    cudaEvent_t e0, e1;
    MCHECK(cudaSetDevice(device));
    MCHECK(cudaMalloc(&a, bytes));
    MCHECK(cudaMalloc(&b, bytes));
    MCHECK(cudaMemset(a, 1, bytes));
    MCHECK(cudaEventCreate(&e0));
    MCHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 13; i++) {
        MCHECK(cudaEventRecord(e0));
        MCHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
        MCHECK(cudaEventRecord(e1));
        MCHECK(cudaEventSynchronize(e1));
        float t = 0;
        MCHECK(cudaEventElapsedTime(&t, e0, e1));
        if (i >= 3)
            ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    *ret_gbps = 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 0;
}

#include <cuda_profiler_api.h>
extern "C" int eng_cuda_profiler(bool on) {
    return (on ? cudaProfilerStart() : cudaProfilerStop()) == cudaSuccess ? 0 : -EIO;
}

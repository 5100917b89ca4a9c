/* cuda_sample_bench.c: the GPU sampler alone -- the cuda backend's SAMPLE hook (eng_cuda_sample_ex:
 * upload of row parameters and logit edits, one kernel, download of ids and logprobs, stream sync)
 * per call at vocab 152064 and batch 1, 4, 16 and 256, on a dummy-model-like (Gaussian, sd 0.78), a
 * peaked (LLM-like) and a flat row. Configs:
 * greedy, temperature 0.8, top-p 0.95, top-k 20 + top-p 0.8, min-p 0.05, top-p 0.95 with penalties
 * (repetition 1.1, presence 0.5, frequency 0.3 over a 512-token history) and with logprobs 5.
 * Prints microseconds per call and per row. At batch 1, 4 and 16 both kernels run in the same process
 * (OM_CUDA_SAMPLE_SPLIT=0: one block per row, k_sample; =1: the split path, one row over many
 * blocks; "no-sparse": the split path with OM_CUDA_SAMPLE_SPARSE=0, i.e. the whole row from one
 * block when the prefix does not compact), with "ids ==" when the last call's ids (and logprobs)
 * are identical to k_sample's; batch 256
 * runs the default choice. Usage: cuda_sample_bench [--iters N] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_backend.h"
#include "eng_sampler.h"

#define BV 152064
#define MAXB 256
#define HIST 512

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* kind 2: the full-size dummy model's logits (Gaussian-like, sd 0.78: top-p 0.95 at temperature
 * 0.8 keeps ~75% of the row, what eng_bench_cuda --service draws from); 1 peaked; 0 flat */
static void s_fill(float *l, int kind) {
    const int peaked = kind == 1;
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int v = 0; v < BV; v++) {
        double s = 0;
        for (int k = 0; k < 4; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (double)(x >> 11) / 9007199254740992.0;
        }
        l[v] = peaked ? (float)((s - 2.0) * 3.5) - 2.0f : (float)((s - 2.0) * (kind == 2 ? 1.358 : 4.3));
    }
    if (peaked)
        for (int i = 0; i < 24; i++)
            l[(i * 6113 + 17) % BV] = 14.0f - 0.35f * (float)i;
}

int main(int argc, char **argv) {
    int iters = 50;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
    if (iters < 1)
        iters = 1;
    eng_backend_t *be = NULL;
    if (eng_backend_new("cuda", 0, 0, &be) < 0 || !be->ops->sample) {
        fprintf(stderr, "cuda_sample_bench: no CUDA backend with a SAMPLE hook\n");
        return 77;
    }
    static float row[BV];
    int64_t shape[2] = {MAXB, BV};
    eng_tensor_t dev;
    int r = eng_tensor_init(&dev, ENG_DTYPE_F32, 2, shape);
    if (r == 0)
        r = be->ops->alloc(be, &dev);
    if (r < 0) {
        fprintf(stderr, "alloc: %d\n", r);
        return 1;
    }
    static int32_t hist[HIST];
    for (int i = 0; i < HIST; i++)
        hist[i] = (i * 7919) % BV;
    eng_sampler_t *cs = NULL;
    if (eng_sampler_new(BV, &cs) < 0)
        return 1;
    static eng_sampler_params_t params[MAXB];
    static uint32_t steps[MAXB], edit0[MAXB], n_edit[MAXB];
    static int32_t ids[MAXB];
    static eng_sampler_result_t res[MAXB], res0[MAXB];
    static int32_t ids0[MAXB];
    static eng_sampler_edit_t edits[HIST];
    const struct {
        const char *name;
        eng_sampler_params_t p;
    } cases[] = {
        {"greedy", {.temperature = 0, .top_p = 1, .repetition_penalty = 1}},
        {"temperature 0.8", {.temperature = 0.8f, .top_p = 1, .repetition_penalty = 1}},
        {"top-p 0.95", {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1}},
        {"top-k 20 top-p 0.8", {.temperature = 0.7f, .top_k = 20, .top_p = 0.8f, .repetition_penalty = 1}},
        {"min-p 0.05", {.temperature = 0.8f, .top_p = 1, .min_p = 0.05f, .repetition_penalty = 1}},
        {"top-p 0.95 + penalties", {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1.1f,
                                    .presence_penalty = 0.5f, .frequency_penalty = 0.3f}},
        {"top-p 0.95 + logprobs 5", {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1,
                                     .n_logprobs = 5}},
    };
    const int bs[4] = {1, 4, 16, 256};
    printf("cuda_sample_bench: SAMPLE hook per call, vocab %d, %d calls per figure\n", BV, iters);
    static const char *const kinds[3] = {"flat", "peaked", "dummy"};
    for (int pk = 2; pk >= 0; pk--) {
        s_fill(row, pk);
        for (int i = 0; r == 0 && i < MAXB; i++)
            r = be->ops->upload(be, &dev, (size_t)i * sizeof row, row, sizeof row);
        if (r < 0) {
            fprintf(stderr, "upload: %d\n", r);
            return 1;
        }
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            eng_sampler_params_t p = cases[c].p;
            p.max_tokens = 1u << 20;
            eng_sampler_seq_t sq = {.prompt = hist, .n_prompt = HIST / 2, .output = hist + HIST / 2,
                                    .n_output = HIST / 2};
            int ne = eng_sampler_edits(cs, &p, &sq, edits, HIST);
            if (ne < 0)
                return 1;
            for (int b = 0; b < 4; b++) {
                int n = bs[b];
                for (int i = 0; i < n; i++) {
                    params[i] = p;
                    params[i].seed = 7 + (uint64_t)i;
                    steps[i] = 0;
                    edit0[i] = 0;
                    n_edit[i] = (uint32_t)ne;
                }
                struct eng_sample_batch sb = {.params = params, .steps = steps, .n_rows = (uint32_t)n,
                                              .edits = edits, .edit0 = edit0, .n_edit = n_edit,
                                              .results = res};
                /* paths: 0 = k_sample, 1 = split, 2 = split without the sparse bin lists
                   (OM_CUDA_SAMPLE_SPARSE=0); batch 256: the default only (-1) */
                const int paths[3] = {n <= 16 ? 0 : -1, 1, 2};
                for (int pi = 0; pi < (n <= 16 ? 3 : 1); pi++) {
                    if (paths[pi] >= 0)
                        setenv("OM_CUDA_SAMPLE_SPLIT", paths[pi] ? "1" : "0", 1);
                    else
                        unsetenv("OM_CUDA_SAMPLE_SPLIT");
                    if (paths[pi] == 2)
                        setenv("OM_CUDA_SAMPLE_SPARSE", "0", 1);
                    else
                        unsetenv("OM_CUDA_SAMPLE_SPARSE");
                    if ((r = be->ops->sample(be, &dev, &sb, ids)) < 0) { /* warm-up, allocations */
                        fprintf(stderr, "sample: %d\n", r);
                        return 1;
                    }
                    double t0 = s_now();
                    for (int it = 0; it < iters; it++) {
                        for (int i = 0; i < n; i++)
                            steps[i] = (uint32_t)it;
                        r = be->ops->sample(be, &dev, &sb, ids);
                    }
                    double dt = (s_now() - t0) / iters;
                    const char *same = "";
                    if (paths[pi] == 0) {
                        memcpy(ids0, ids, (size_t)n * sizeof *ids);
                        memcpy(res0, res, (size_t)n * sizeof *res);
                    } else if (paths[pi] >= 1) {
                        int eq = memcmp(ids0, ids, (size_t)n * sizeof *ids) == 0;
                        for (int i = 0; eq && p.n_logprobs > 0 && i < n; i++)
                            eq = res0[i].logprob == res[i].logprob && res0[i].n_top == res[i].n_top &&
                                 !memcmp(res0[i].top_ids, res[i].top_ids,
                                         res[i].n_top * sizeof *res[i].top_ids) &&
                                 !memcmp(res0[i].top_logprobs, res[i].top_logprobs,
                                         res[i].n_top * sizeof *res[i].top_logprobs);
                        same = eq ? "  ids ==" : "  ids DIFFER";
                    }
                    printf("%-6s %-26s batch %3d %-9s: %8.1f us/call (%6.2f us/row)%s%s\n",
                           kinds[pk], cases[c].name, n,
                           paths[pi] < 0    ? "default"
                           : paths[pi] == 2 ? "no-sparse"
                           : paths[pi]      ? "split"
                                            : "k_sample",
                           dt * 1e6, dt * 1e6 / n, same, r < 0 ? "  FAILED" : "");
                    fflush(stdout);
                }
                unsetenv("OM_CUDA_SAMPLE_SPLIT");
                unsetenv("OM_CUDA_SAMPLE_SPARSE");
            }
        }
    }
    eng_sampler_free(cs);
    be->ops->release(be, &dev);
    eng_backend_free(be);
    return 0;
}

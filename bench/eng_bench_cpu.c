/* eng_bench_cpu.c: throughput of the CPU reference backend (eng_model + cpu/): prefill and greedy
 * decode tokens per second for B sequences of a random prompt, through the same eng_model_forward
 * the engine runs. Not a test: it asserts nothing and prints its figures.
 *   eng_bench_cpu MODEL_DIR [--threads N] [--prompt N] [--gen N] [--batch B] [--dummy]
 * The CPU backend is the spec (plain loops, double accumulation), so these figures are a floor,
 * not a target; the CUDA backend is the fast path. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_model.h"

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: eng_bench_cpu MODEL_DIR [--threads N] [--prompt N] [--gen N] "
                        "[--batch B] [--dummy]\n");
        return 2;
    }
    const char *dir = argv[1];
    int threads = 0;
    uint32_t n_prompt = 128, n_gen = 32, batch = 1;
    bool dummy = false;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--dummy"))
            dummy = true;
        else if (i + 1 < argc && !strcmp(argv[i], "--threads"))
            threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--prompt"))
            n_prompt = (uint32_t)atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--gen"))
            n_gen = (uint32_t)atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--batch"))
            batch = (uint32_t)atoi(argv[++i]);
        else {
            fprintf(stderr, "eng_bench_cpu: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!n_prompt || !n_gen || !batch || batch > 64)
        return 2;
    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    char err[512] = "";
    if (eng_backend_cpu_new(threads, &b) < 0)
        return 1;
    eng_model_load_opts_t lo = {.load_format = dummy ? "dummy" : "auto"};
    double t0 = s_now();
    if (eng_model_load(dir, &lo, b, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "eng_bench_cpu: %s\n", err);
        return 1;
    }
    double t_load = s_now() - t0;
    const eng_config_t *c = eng_model_config(m);
    const uint32_t bs = 16, per_seq = (n_prompt + n_gen + bs - 1) / bs;
    if (eng_model_alloc_kv(m, per_seq * batch, bs) < 0)
        return 1;
    int32_t *prompt = malloc((size_t)batch * n_prompt * sizeof(int32_t));
    int32_t *btab = malloc((size_t)batch * per_seq * sizeof(int32_t));
    int32_t *last = malloc(batch * sizeof(int32_t));
    float *logits = malloc((size_t)batch * c->vocab_size * sizeof(float));
    eng_batch_seq_t *seqs = calloc(batch, sizeof(*seqs));
    if (!prompt || !btab || !last || !logits || !seqs)
        return 1;
    uint64_t st = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)batch * n_prompt; i++) {
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        prompt[i] = (int32_t)(st % c->vocab_size);
    }
    for (uint32_t i = 0; i < batch * per_seq; i++)
        btab[i] = (int32_t)i;
    for (uint32_t s = 0; s < batch; s++)
        seqs[s] = (eng_batch_seq_t){.tokens = prompt + (size_t)s * n_prompt, .n_tokens = n_prompt,
                                    .block_table = btab + s * per_seq, .n_blocks = per_seq,
                                    .want_logits = true};
    eng_batch_t bt = {.seqs = seqs, .n_seqs = batch, .n_tokens = batch * n_prompt, .n_logits = batch};
    eng_tensor_t *lt = NULL;
    t0 = s_now();
    int r = eng_model_forward(m, &bt, &lt);
    if (r < 0 || eng_backend_download(b, logits, lt) < 0)
        return 1;
    double t_prefill = s_now() - t0;
    t0 = s_now();
    for (uint32_t g = 0; g < n_gen; g++) {
        for (uint32_t s = 0; s < batch; s++) {
            const float *row = logits + (size_t)s * c->vocab_size;
            int32_t best = 0;
            for (uint32_t v = 1; v < c->vocab_size; v++)
                if (row[v] > row[best])
                    best = (int32_t)v;
            last[s] = best;
            seqs[s].tokens = &last[s];
            seqs[s].n_tokens = 1;
            seqs[s].n_past = n_prompt + g;
        }
        bt.n_tokens = batch;
        if (eng_model_forward(m, &bt, &lt) < 0 || eng_backend_download(b, logits, lt) < 0)
            return 1;
    }
    double t_decode = s_now() - t0;
    printf("eng_bench_cpu %s: %s, %u layers, D %u, V %u, %.1f MB weights, load %.2f s\n", dir,
           c->arch_name, c->n_layers, c->hidden_size, c->vocab_size,
           eng_model_weight_bytes(m) / 1e6, t_load);
    printf("  threads %d batch %u: prefill %u tok %.1f tok/s, decode %u steps %.1f tok/s "
           "(%.2f ms/step)\n",
           threads, batch, batch * n_prompt, batch * n_prompt / t_prefill, n_gen,
           batch * n_gen / t_decode, 1e3 * t_decode / n_gen);
    free(prompt);
    free(btab);
    free(last);
    free(logits);
    free(seqs);
    eng_model_free(m);
    eng_backend_free(b);
    return 0;
}

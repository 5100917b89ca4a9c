/* sampler_bench.c: the CPU sampler (eng_sampler_sample, the CPU backend's sampler and the host
 * path) per token at vocab 152064, one row, one thread: greedy, temperature, top-k, top-p, min-p,
 * penalties and logprobs, on two synthetic logits rows: "peaked" (an LLM-like row: a normal body,
 * sd 2, and 32 tokens 6..16 above it) and "flat" (the normal body alone, sd 2.5: the worst case for
 * truncation, a top-p set of thousands). Prints one line per case: microseconds per token.
 * Usage: sampler_bench [--iters N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_sampler.h"

#define V 152064

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void s_fill(float *l, double sd, int peaked) {
    uint64_t x = 88172645463325252ull;
    for (int v = 0; v < V; v++) { /* Irwin-Hall: approximately normal */
        double s = 0;
        for (int k = 0; k < 4; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s += (double)(x >> 11) / 9007199254740992.0;
        }
        l[v] = (float)((s - 2.0) * sd * 1.732);
    }
    if (peaked)
        for (int i = 0; i < 32; i++)
            l[(i * 4759 + 11) % V] = 16.0f - 0.3f * (float)i;
}

int main(int argc, char **argv) {
    int iters = 50;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
    if (iters < 1)
        iters = 1;
    static float base[2][V], row[V];
    s_fill(base[0], 2.0, 1);
    s_fill(base[1], 2.5, 0);
    static int32_t hist[512];
    for (int i = 0; i < 512; i++)
        hist[i] = (i * 7919) % V;
    struct {
        const char *name;
        eng_sampler_params_t p;
    } cases[] = {
        {"greedy", {.temperature = 0, .top_p = 1, .repetition_penalty = 1}},
        {"temperature 0.8", {.temperature = 0.8f, .top_p = 1, .repetition_penalty = 1}},
        {"top-k 50", {.temperature = 0.8f, .top_k = 50, .top_p = 1, .repetition_penalty = 1}},
        {"top-p 0.95", {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1}},
        {"top-k 20 top-p 0.8", {.temperature = 0.7f, .top_k = 20, .top_p = 0.8f, .repetition_penalty = 1}},
        {"min-p 0.05", {.temperature = 0.8f, .top_p = 1, .min_p = 0.05f, .repetition_penalty = 1}},
        {"top-p 0.95 + rep 1.1 + pres 0.5 + freq 0.2",
         {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1.1f, .presence_penalty = 0.5f,
          .frequency_penalty = 0.2f}},
        {"top-p 0.95 + logprobs 5",
         {.temperature = 0.8f, .top_p = 0.95f, .repetition_penalty = 1, .n_logprobs = 5}},
    };
    eng_sampler_t *s = NULL;
    if (eng_sampler_new(V, &s) < 0) {
        fprintf(stderr, "eng_sampler_new failed\n");
        return 1;
    }
    printf("sampler_bench: CPU sampler, vocab %d, one thread, %d tokens per case (prompt 256 + output 256 ids for penalties)\n",
           V, iters);
    for (int r = 0; r < 2; r++) {
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            eng_sampler_params_t p = cases[c].p;
            p.seed = 42;
            p.max_tokens = 1u << 30;
            double t = 0;
            long sum = 0;
            for (int i = 0; i < iters; i++) {
                memcpy(row, base[r], sizeof row);
                eng_sampler_seq_t sq = {.prompt = hist, .n_prompt = 256, .output = hist + 256,
                                        .n_output = 256};
                eng_sampler_result_t res;
                p.seed = 42 + (uint64_t)i; /* a fresh draw each time */
                double t0 = s_now();
                if (eng_sampler_sample(s, &p, &sq, row, &res) < 0) {
                    fprintf(stderr, "sample failed\n");
                    return 1;
                }
                t += s_now() - t0;
                sum += res.token;
            }
            printf("%-7s %-44s %9.1f us/token  (checksum %ld)\n", r ? "flat" : "peaked",
                   cases[c].name, 1e6 * t / iters, sum);
        }
    }
    eng_sampler_free(s);
    return 0;
}

/* dec_bench.c: decoder_svc benchmarks.
 *
 *   1. detokenize throughput (tokens/s): B streams advanced one token per step, as the engine
 *      produces them (plain; with two stop strings; with the reasoning split)
 *   2. the per-step cost of the decoder for a B-request TokenBatch: protobuf unpack of the batch
 *      (into an om_arena, as the daemon does) + dec_service_handle_batch, every request streaming,
 *      emit packing each TextDelta into a buffer as the transport would. Batches are packed
 *      beforehand (that is the engine's cost). Reports mean / p50 / p99 µs per step.
 * Token ids are uniform over the non-special vocabulary of the model (seeded xorshift).
 *
 * usage: dec_bench [MODEL_DIR] [--batch B] [--steps T]
 *        MODEL_DIR defaults to $OM_SHARED_DIR/fixtures/tiny-omni. */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dec_service.h"
#include "dec_stream.h"
#include "om_arena.h"
#include "om_vocab.h"

static uint64_t s_rng = 0x2545F4914F6CDD1Dull;
static uint64_t s_rand(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int s_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ids[B][T]: uniform over the non-special vocabulary */
static int32_t *s_make_ids(const om_vocab_t *v, size_t batch, size_t steps) {
    int32_t *ids = malloc(batch * steps * sizeof(*ids));
    if (!ids)
        return NULL;
    size_t n_vocab = om_vocab_size(v);
    for (size_t i = 0; i < batch * steps; i++) {
        int32_t id;
        do
            id = (int32_t)(s_rand() % n_vocab);
        while (om_vocab_is_special(v, id) || !om_vocab_token_bytes(v, id, &(size_t){0}));
        ids[i] = id;
    }
    return ids;
}

static int s_bench_streams(const om_vocab_t *v, const int32_t *ids, size_t batch, size_t steps,
                           const char *name, const dec_stream_opts_t *o) {
    dec_stream_t **s = calloc(batch, sizeof(*s));
    if (!s)
        return -ENOMEM;
    int r = 0;
    for (size_t b = 0; b < batch && r == 0; b++)
        r = dec_stream_new(v, o, &s[b]);
    size_t bytes = 0;
    uint64_t t0 = s_now_ns();
    for (size_t t = 0; t < steps && r == 0; t++) {
        for (size_t b = 0; b < batch; b++) {
            dec_delta_t d;
            r = dec_stream_push(s[b], &ids[b * steps + t], 1, t + 1 == steps, &d);
            if (r < 0)
                break;
            bytes += d.text_len + d.reasoning_len;
        }
    }
    uint64_t dt = s_now_ns() - t0;
    for (size_t b = 0; b < batch; b++)
        dec_stream_free(s[b]);
    free(s);
    if (r < 0)
        return r;
    double tok = (double)batch * (double)steps;
    printf("detok %-22s batch %4zu x %5zu tokens: %8.2f Mtok/s  (%.1f ns/token, %.1f MB/s text)\n",
           name, batch, steps, tok / ((double)dt / 1e9) / 1e6, (double)dt / tok,
           (double)bytes / ((double)dt / 1e9) / 1e6);
    return 0;
}

struct emit_ctx {
    bool pack;      /* pack each envelope (as the transport does) or only count it */
    uint8_t *buf;   /* packing buffer */
    size_t cap;     /* bytes */
    size_t n_env;   /* envelopes emitted */
    size_t n_bytes; /* bytes packed */
};

static int s_emit(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env) {
    (void)hdr;
    struct emit_ctx *c = ud;
    c->n_env++;
    if (!c->pack)
        return 0;
    size_t len = omnipipe__envelope__get_packed_size(env);
    if (len > c->cap) {
        uint8_t *p = realloc(c->buf, len);
        if (!p)
            return -ENOMEM;
        c->buf = p;
        c->cap = len;
    }
    omnipipe__envelope__pack(env, c->buf);
    c->n_bytes += len;
    return 0;
}

static int s_bench_service(const om_vocab_t *v, const int32_t *ids, size_t batch, size_t steps,
                           bool pack) {
    dec_service_t *svc = NULL;
    int r = dec_service_new_with_vocab(v, &svc);
    if (r < 0)
        return r;
    om_arena_t *arena = NULL;
    r = om_arena_new(1 << 20, &arena);
    if (r < 0) {
        dec_service_free(svc);
        return r;
    }
    /* pre-pack every step's TokenBatch */
    uint8_t **packed = calloc(steps, sizeof(*packed));
    size_t *packed_len = calloc(steps, sizeof(*packed_len));
    Omnipipe__SeqStep *st = calloc(batch, sizeof(*st));
    Omnipipe__SeqStep **pst = calloc(batch, sizeof(*pst));
    uint64_t *ns = calloc(steps, sizeof(*ns));
    char(*cid)[8] = calloc(batch, 8);
    if (!packed || !packed_len || !st || !pst || !ns || !cid) {
        r = -ENOMEM;
        goto out;
    }
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    char *stops[] = {"<|user|>", "\n\nObservation:"};
    sp.n_stop = 2;
    sp.stop = stops;
    Omnipipe__Header hdr = OMNIPIPE__HEADER__INIT;
    hdr.has_proto_version = true;
    hdr.proto_version = OM_PROTO_VERSION;
    hdr.trace_id = "bench";
    for (size_t t = 0; t < steps; t++) {
        for (size_t b = 0; b < batch; b++) {
            Omnipipe__SeqStep init = OMNIPIPE__SEQ_STEP__INIT;
            st[b] = init;
            snprintf(cid[b], 8, "c%03zu", b % 64);
            st[b].has_request_id = true;
            st[b].request_id = b;
            st[b].has_client_id = true;
            st[b].client_id.data = (uint8_t *)cid[b];
            st[b].client_id.len = strlen(cid[b]);
            st[b].n_token_ids = 1;
            st[b].token_ids = (int32_t *)&ids[b * steps + t];
            st[b].has_completion_tokens = true;
            st[b].completion_tokens = (uint32_t)t + 1;
            if (t == 0) {
                st[b].sampling = &sp;
                st[b].has_stream = true;
                st[b].stream = true;
                st[b].has_prompt_tokens = true;
                st[b].prompt_tokens = 100;
            }
            if (t == 0 || t + 1 == steps)
                st[b].header = &hdr;
            if (t + 1 == steps) {
                st[b].has_finish = true;
                st[b].finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
            }
            pst[b] = &st[b];
        }
        Omnipipe__TokenBatch tb = OMNIPIPE__TOKEN_BATCH__INIT;
        tb.engine_id = "engine0";
        tb.has_step = true;
        tb.step = t;
        tb.n_seqs = batch;
        tb.seqs = pst;
        Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
        env.header = &hdr;
        env.body_case = OMNIPIPE__ENVELOPE__BODY_BATCH;
        env.batch = &tb;
        packed_len[t] = omnipipe__envelope__get_packed_size(&env);
        packed[t] = malloc(packed_len[t]);
        if (!packed[t]) {
            r = -ENOMEM;
            goto out;
        }
        omnipipe__envelope__pack(&env, packed[t]);
    }
    /* unpack alone, for the breakdown */
    uint64_t t_unpack = s_now_ns();
    for (size_t t = 0; t < steps; t++) {
        om_arena_reset(arena);
        if (!omnipipe__envelope__unpack(om_arena_allocator(arena), packed_len[t], packed[t])) {
            r = -EBADMSG;
            goto out;
        }
    }
    t_unpack = s_now_ns() - t_unpack;
    if (pack)
        printf("service: unpack of one %zu-request TokenBatch (%zu bytes, arena): %.1f us\n", batch,
               packed_len[steps / 2], (double)t_unpack / (double)steps / 1e3);
    struct emit_ctx ec = {.pack = pack};
    for (size_t t = 0; t < steps; t++) {
        uint64_t t0 = s_now_ns();
        om_arena_reset(arena);
        Omnipipe__Envelope *env =
            omnipipe__envelope__unpack(om_arena_allocator(arena), packed_len[t], packed[t]);
        if (!env || env->body_case != OMNIPIPE__ENVELOPE__BODY_BATCH) {
            r = -EBADMSG;
            break;
        }
        r = dec_service_handle_batch(svc, env->batch, 1700000000000ull + t, s_emit, &ec);
        ns[t] = s_now_ns() - t0;
        if (r < 0)
            break;
    }
    free(ec.buf);
    if (r == 0) {
        /* the first step creates every request, the last one finishes them: report them apart */
        uint64_t first = ns[0], last = ns[steps - 1];
        size_t n_mid = steps > 2 ? steps - 2 : 0;
        uint64_t sum = 0;
        for (size_t t = 1; t + 1 < steps; t++)
            sum += ns[t];
        if (n_mid > 0) {
            qsort(ns + 1, n_mid, sizeof(*ns), s_cmp_u64);
            printf("service step, %zu requests (unpack + handle%s): mean %.1f us, "
                   "p50 %.1f us, p99 %.1f us, max %.1f us over %zu steps\n",
                   batch, pack ? " + pack deltas" : ", no-op emit",
                   (double)sum / (double)n_mid / 1e3, (double)ns[1 + n_mid / 2] / 1e3,
                   (double)ns[1 + (n_mid * 99) / 100] / 1e3, (double)ns[steps - 2] / 1e3, n_mid);
        }
        if (!pack)
            goto out;
        printf(
            "service first step (creates %zu requests): %.1f us; last step (%zu Finals): %.1f us\n",
            batch, (double)first / 1e3, batch, (double)last / 1e3);
        printf("service emitted %zu envelopes, %.1f MB packed\n", ec.n_env,
               (double)ec.n_bytes / 1e6);
    }
out:
    if (packed)
        for (size_t t = 0; t < steps; t++)
            free(packed[t]);
    free(packed);
    free(packed_len);
    free(st);
    free(pst);
    free(ns);
    free(cid);
    om_arena_free(arena);
    dec_service_free(svc);
    return r;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    char def[4096];
    size_t batch = 256, steps = 1000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = strtoul(argv[++i], NULL, 10);
        else
            model = argv[i];
    }
    if (!model) {
        const char *sh = getenv("OM_SHARED_DIR");
        if (!sh) {
            fprintf(stderr, "dec_bench: give MODEL_DIR or set OM_SHARED_DIR\n");
            return 2;
        }
        snprintf(def, sizeof(def), "%s/fixtures/tiny-omni", sh);
        model = def;
    }
    if (batch == 0 || steps < 3) {
        fprintf(stderr, "dec_bench: --batch must be >= 1 and --steps >= 3\n");
        return 2;
    }
    char err[512] = "";
    om_vocab_t *v = NULL;
    int r = om_vocab_load(model, &v, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "dec_bench: %s: %s\n", model, err);
        return 1;
    }
    int32_t *ids = s_make_ids(v, batch, steps);
    if (!ids) {
        om_vocab_free(v);
        return 1;
    }
    const char *stops[] = {"<|user|>", "\n\nObservation:"};
    dec_stream_opts_t plain = {.skip_special_tokens = true};
    dec_stream_opts_t stop = {.skip_special_tokens = true, .stop = stops, .n_stop = 2};
    dec_stream_opts_t split = {
        .skip_special_tokens = true, .split_reasoning = true, .reasoning_starts_open = true};
    r = s_bench_streams(v, ids, batch, steps, "plain", &plain);
    if (r == 0)
        r = s_bench_streams(v, ids, batch, steps, "2 stop strings", &stop);
    if (r == 0)
        r = s_bench_streams(v, ids, batch, steps, "reasoning split", &split);
    if (r == 0)
        r = s_bench_service(v, ids, batch, steps, true);
    if (r == 0)
        r = s_bench_service(v, ids, batch, steps, false);
    if (r < 0)
        fprintf(stderr, "dec_bench: failed: %s\n", strerror(-r));
    free(ids);
    om_vocab_free(v);
    return r < 0 ? 1 : 0;
}

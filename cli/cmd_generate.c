/* cmd_generate.c: `omnipipe generate`: runs token ids through the engine service (eng_service, the
 * code engine_svc runs) in process and prints the generated ids.
 *   omnipipe generate --model DIR [--backend cpu|cuda] --ids 1,2,3 --max-new-tokens N [--ignore-eos]
 *                     [--temperature T --top-p P --top-k K --min-p M --seed S] [--load-format dummy]
 *   prints one JSON line {"tokens": [...], "finish_reason": "stop"|"length"|"abort"|"error"}
 *   (plus "error": {"code", "message"} on an error).
 *   --jsonl: each stdin line is {"ids": [...], "max_new_tokens": N, "ignore_eos": bool, "temperature",
 *   "top_p", "top_k", "min_p", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty",
 *   "min_tokens", "stop_token_ids"}; all lines are submitted first and run as one concurrent batch;
 *   each output line is the result of the input line in the same order.
 * Exit status 0 when every request finished without error, 1 otherwise, 2 on a usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_service.h"
#include "om_err.h"

int cmd_generate(int argc, char **argv);

typedef struct s_gen {
    int32_t *ids;             /* (n_ids) prompt */
    size_t n_ids;
    Omnipipe__SamplingParams sp;
    int32_t *stop_ids;        /* (sp.n_stop_token_ids) */
    int32_t *out;             /* (n_out) generated */
    size_t n_out, cap_out;
    int finish;               /* Omnipipe__FinishReason */
    int code;                 /* Status code on error */
    char *err;                /* Status message on error (malloc) */
} s_gen_t;

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: omnipipe generate --model DIR [--backend cpu|cuda] [--device N] [--threads N]\n"
            "         [--load-format auto|dummy] (--ids 1,2,3 | --jsonl) [--max-new-tokens N]\n"
            "         [--ignore-eos] [--temperature T] [--top-p P] [--top-k K] [--min-p M]\n"
            "         [--seed S] [--max-batch-tokens N] [--kv-blocks N] [--block-size N]\n"
            "         [--no-prefix-cache]\n");
}

static uint64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int s_parse_ids(const char *text, s_gen_t *g) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return -ENOMEM;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return -EINVAL;
        }
        if (n == cap) {
            int32_t *q = realloc(ids, cap * 2 * sizeof *ids);
            if (!q) {
                free(ids);
                return -ENOMEM;
            }
            ids = q;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    g->ids = ids;
    g->n_ids = n;
    return 0;
}

/* one --jsonl line into g; -EINVAL with msg naming the key */
static int s_parse_line(const char *line, s_gen_t *g, char *msg, size_t ml) {
    json_error_t jerr;
    json_t *o = json_loads(line, 0, &jerr);
    if (!o || !json_is_object(o)) {
        snprintf(msg, ml, "not a JSON object: %s", o ? "" : jerr.text);
        json_decref(o);
        return -EINVAL;
    }
    int r = -EINVAL;
    json_t *ids = json_object_get(o, "ids"), *v;
    if (!json_is_array(ids)) {
        snprintf(msg, ml, "\"ids\": must be an array of token ids");
        goto out;
    }
    g->n_ids = json_array_size(ids);
    g->ids = malloc((g->n_ids ? g->n_ids : 1) * sizeof *g->ids);
    if (!g->ids) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < g->n_ids; i++) {
        json_t *e = json_array_get(ids, i);
        if (!json_is_integer(e) || json_integer_value(e) < INT32_MIN || json_integer_value(e) > INT32_MAX) {
            snprintf(msg, ml, "\"ids\"[%zu]: not a token id", i);
            goto out;
        }
        g->ids[i] = (int32_t)json_integer_value(e);
    }
#define S_NUM(key, field, type)                                                                    \
    if ((v = json_object_get(o, key)) && !json_is_null(v)) {                                       \
        if (!json_is_number(v)) {                                                                  \
            snprintf(msg, ml, "\"%s\": must be a number", key);                                    \
            goto out;                                                                              \
        }                                                                                          \
        g->sp.has_##field = true;                                                                  \
        g->sp.field = (type)json_number_value(v);                                                  \
    }
    S_NUM("max_new_tokens", max_tokens, uint32_t)
    S_NUM("max_tokens", max_tokens, uint32_t)
    S_NUM("min_tokens", min_tokens, uint32_t)
    S_NUM("temperature", temperature, float)
    S_NUM("top_p", top_p, float)
    S_NUM("top_k", top_k, int32_t)
    S_NUM("min_p", min_p, float)
    S_NUM("repetition_penalty", repetition_penalty, float)
    S_NUM("presence_penalty", presence_penalty, float)
    S_NUM("frequency_penalty", frequency_penalty, float)
    S_NUM("logprobs", logprobs, uint32_t)
#undef S_NUM
    if ((v = json_object_get(o, "seed")) && json_is_integer(v)) {
        g->sp.has_seed = true;
        g->sp.seed = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(o, "ignore_eos")) && json_is_boolean(v)) {
        g->sp.has_ignore_eos = true;
        g->sp.ignore_eos = json_is_true(v);
    }
    if ((v = json_object_get(o, "stop_token_ids")) && json_is_array(v)) {
        size_t n = json_array_size(v);
        g->stop_ids = malloc((n ? n : 1) * sizeof *g->stop_ids);
        if (!g->stop_ids) {
            r = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            g->stop_ids[i] = (int32_t)json_integer_value(json_array_get(v, i));
        g->sp.stop_token_ids = g->stop_ids;
        g->sp.n_stop_token_ids = n;
    }
    r = 0;
out:
    json_decref(o);
    return r;
}

static const char *s_finish_name(int f) {
    switch (f) {
    case OMNIPIPE__FINISH_REASON__FINISH_STOP:
        return "stop";
    case OMNIPIPE__FINISH_REASON__FINISH_LENGTH:
        return "length";
    case OMNIPIPE__FINISH_REASON__FINISH_STOP_STRING:
        return "stop";
    case OMNIPIPE__FINISH_REASON__FINISH_ABORT:
        return "abort";
    case OMNIPIPE__FINISH_REASON__FINISH_ERROR:
        return "error";
    default:
        return "none";
    }
}

static void s_print(const s_gen_t *g) {
    printf("{\"tokens\": [");
    for (size_t i = 0; i < g->n_out; i++)
        printf(i ? ", %d" : "%d", g->out[i]);
    printf("], \"finish_reason\": \"%s\"", s_finish_name(g->finish));
    if (g->err) {
        json_t *m = json_string(g->err);
        char *txt = m ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
        printf(", \"error\": {\"code\": \"%s\", \"message\": %s}", om_code_name(g->code),
               txt ? txt : "\"?\"");
        free(txt);
        json_decref(m);
    }
    printf("}\n");
}

static int s_collect(const Omnipipe__TokenBatch *b, s_gen_t *gens, size_t n_gens) {
    for (size_t i = 0; b && i < b->n_seqs; i++) {
        const Omnipipe__SeqStep *st = b->seqs[i];
        if (st->request_id >= n_gens)
            continue;
        s_gen_t *g = &gens[st->request_id];
        if (g->n_out + st->n_token_ids > g->cap_out) {
            size_t cap = g->cap_out ? g->cap_out : 64;
            while (cap < g->n_out + st->n_token_ids)
                cap *= 2;
            int32_t *p = realloc(g->out, cap * sizeof *p);
            if (!p)
                return -ENOMEM;
            g->out = p;
            g->cap_out = cap;
        }
        memcpy(g->out + g->n_out, st->token_ids, st->n_token_ids * sizeof *st->token_ids);
        g->n_out += st->n_token_ids;
        if (st->has_finish && st->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE) {
            g->finish = st->finish;
            if (st->error) {
                g->code = st->error->code;
                free(g->err);
                g->err = strdup(st->error->message ? st->error->message : "error");
            }
        }
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    enum {
        O_MODEL = 1000, O_BACKEND, O_DEVICE, O_THREADS, O_LOAD_FORMAT, O_IDS, O_MAX_NEW, O_IGNORE_EOS,
        O_TEMP, O_TOP_P, O_TOP_K, O_MIN_P, O_SEED, O_JSONL, O_MBT, O_KV_BLOCKS, O_BLOCK_SIZE,
        O_NO_PC, O_HELP,
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"backend", required_argument, NULL, O_BACKEND},
        {"device", required_argument, NULL, O_DEVICE},
        {"threads", required_argument, NULL, O_THREADS},
        {"load-format", required_argument, NULL, O_LOAD_FORMAT},
        {"ids", required_argument, NULL, O_IDS},
        {"max-new-tokens", required_argument, NULL, O_MAX_NEW},
        {"ignore-eos", no_argument, NULL, O_IGNORE_EOS},
        {"temperature", required_argument, NULL, O_TEMP},
        {"top-p", required_argument, NULL, O_TOP_P},
        {"top-k", required_argument, NULL, O_TOP_K},
        {"min-p", required_argument, NULL, O_MIN_P},
        {"seed", required_argument, NULL, O_SEED},
        {"jsonl", no_argument, NULL, O_JSONL},
        {"max-batch-tokens", required_argument, NULL, O_MBT},
        {"kv-blocks", required_argument, NULL, O_KV_BLOCKS},
        {"block-size", required_argument, NULL, O_BLOCK_SIZE},
        {"no-prefix-cache", no_argument, NULL, O_NO_PC},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    eng_service_opts_t so = {.backend = "cpu", .load_format = "auto", .engine_id = "generate"};
    const char *ids_text = NULL;
    bool jsonl = false;
    Omnipipe__SamplingParams cli_sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: so.model_dir = optarg; break;
        case O_BACKEND: so.backend = optarg; break;
        case O_DEVICE: so.device = atoi(optarg); break;
        case O_THREADS: so.n_threads = atoi(optarg); break;
        case O_LOAD_FORMAT: so.load_format = optarg; break;
        case O_IDS: ids_text = optarg; break;
        case O_MAX_NEW: cli_sp.has_max_tokens = true; cli_sp.max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_IGNORE_EOS: cli_sp.has_ignore_eos = true; cli_sp.ignore_eos = true; break;
        case O_TEMP: cli_sp.has_temperature = true; cli_sp.temperature = strtof(optarg, NULL); break;
        case O_TOP_P: cli_sp.has_top_p = true; cli_sp.top_p = strtof(optarg, NULL); break;
        case O_TOP_K: cli_sp.has_top_k = true; cli_sp.top_k = atoi(optarg); break;
        case O_MIN_P: cli_sp.has_min_p = true; cli_sp.min_p = strtof(optarg, NULL); break;
        case O_SEED: cli_sp.has_seed = true; cli_sp.seed = strtoull(optarg, NULL, 10); break;
        case O_JSONL: jsonl = true; break;
        case O_MBT: so.max_batch_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_KV_BLOCKS: so.kv_blocks = strtoull(optarg, NULL, 10); break;
        case O_BLOCK_SIZE: so.block_size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_NO_PC: so.no_prefix_cache = true; break;
        case O_HELP: s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (!so.model_dir || (!ids_text && !jsonl) || (ids_text && jsonl)) {
        fprintf(stderr, "generate: need --model and exactly one of --ids or --jsonl\n");
        s_usage(stderr);
        return 2;
    }

    s_gen_t *gens = NULL;
    size_t n_gens = 0, cap_gens = 0;
    int rc = 1;
    eng_service_t *svc = NULL;
    if (ids_text) {
        gens = calloc(1, sizeof *gens);
        if (!gens)
            return 1;
        n_gens = 1;
        gens[0].sp = cli_sp;
        if (s_parse_ids(ids_text, &gens[0]) < 0 || gens[0].n_ids == 0) {
            fprintf(stderr, "generate: --ids: expected comma-separated token ids, got '%s'\n", ids_text);
            rc = 2;
            goto done;
        }
    } else {
        char *line = NULL;
        size_t lcap = 0;
        ssize_t len;
        while ((len = getline(&line, &lcap, stdin)) >= 0) {
            if (len == 0 || strspn(line, " \t\r\n") == (size_t)len)
                continue;
            if (n_gens == cap_gens) {
                size_t cap = cap_gens ? cap_gens * 2 : 16;
                s_gen_t *p = realloc(gens, cap * sizeof *p);
                if (!p) {
                    free(line);
                    goto done;
                }
                gens = p;
                cap_gens = cap;
            }
            s_gen_t *g = &gens[n_gens++];
            memset(g, 0, sizeof *g);
            g->sp = cli_sp; /* command-line sampling flags are defaults for every line */
            char msg[256];
            if (s_parse_line(line, g, msg, sizeof msg) < 0) {
                fprintf(stderr, "generate: stdin line %zu: %s\n", n_gens, msg);
                free(line);
                rc = 2;
                goto done;
            }
        }
        free(line);
    }

    char err[512] = "";
    int r = eng_service_new(&so, NULL, NULL, &svc, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "generate: loading '%s': %s\n", so.model_dir, err);
        goto done;
    }
    uint64_t now = s_now_ms();
    for (size_t i = 0; i < n_gens; i++) { /* submit all, then step until done */
        Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
        h.has_request_id = true;
        h.request_id = i;
        Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
        pr.ids = gens[i].ids;
        pr.n_ids = gens[i].n_ids;
        pr.sampling = &gens[i].sp;
        r = eng_service_submit(svc, &h, &pr, now);
        if (r < 0) {
            fprintf(stderr, "generate: submit: %s\n", strerror(-r));
            goto done;
        }
    }
    while (eng_service_has_work(svc)) {
        const Omnipipe__TokenBatch *b = NULL;
        r = eng_service_step(svc, s_now_ms(), &b);
        if (s_collect(b, gens, n_gens) < 0) {
            fprintf(stderr, "generate: out of memory\n");
            goto done;
        }
        if (r < 0) {
            fprintf(stderr, "generate: engine step failed: %s\n", strerror(-r));
            eng_service_fail_all(svc, r, "engine step failed");
        }
    }
    rc = 0;
    for (size_t i = 0; i < n_gens; i++) {
        s_print(&gens[i]);
        if (gens[i].finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR ||
            gens[i].finish == OMNIPIPE__FINISH_REASON__FINISH_NONE)
            rc = 1;
    }
    fflush(stdout);
done:
    eng_service_free(svc);
    for (size_t i = 0; i < n_gens; i++) {
        free(gens[i].ids);
        free(gens[i].stop_ids);
        free(gens[i].out);
        free(gens[i].err);
    }
    free(gens);
    return rc;
}

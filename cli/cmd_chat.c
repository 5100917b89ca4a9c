/* cmd_chat.c: `omnipipe chat`, a multi-turn conversation through the running pipeline. The
 * conversation manager keeps the history (system prompt, then user/assistant turns) and sends the
 * whole conversation with each turn, as the chat template expects; replies stream as TextDelta
 * arrive. With --script FILE each line is one user turn and each reply is printed after it; the
 * exit status is non-zero if any turn failed. Interactive: /reset clears the history, /exit quits. */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "om_client.h"
#include "om_err.h"

typedef struct chat_turn {
    char *role; /* "user" | "assistant" */
    char *text; /* malloc'd */
} chat_turn_t;

typedef struct chat_history {
    chat_turn_t *v;
    size_t n, cap;
} chat_history_t;

static int s_push(chat_history_t *h, const char *role, const char *text, size_t len) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        chat_turn_t *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    char *t = malloc(len + 1);
    if (!t)
        return -ENOMEM;
    memcpy(t, text, len);
    t[len] = '\0';
    h->v[h->n].role = (char *)role;
    h->v[h->n].text = t;
    h->n++;
    return 0;
}

static void s_clear(chat_history_t *h) {
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i].text);
    h->n = 0;
}

typedef struct chat_opts {
    const char *system;
    long max_tokens;       /* -1 = model default */
    double temperature;    /* < 0 = model default */
    long long seed;        /* -1 = none */
    long deadline_ms;      /* 0 = default */
    bool stream;
} chat_opts_t;

/* One turn: sends history + the new user message, prints the reply. 0 on success (the reply is
 * appended to the history), 1 when the pipeline answered with an error. */
static int s_turn(om_client_t *c, chat_history_t *h, const chat_opts_t *o, const char *user) {
    size_t n_msgs = h->n + 1 + (o->system ? 1 : 0);
    Omnipipe__Message *msgs = calloc(n_msgs, sizeof *msgs);
    Omnipipe__Message **ptrs = calloc(n_msgs, sizeof *ptrs);
    if (!msgs || !ptrs) {
        free(msgs);
        free(ptrs);
        return -ENOMEM;
    }
    size_t k = 0;
    if (o->system) {
        omnipipe__message__init(&msgs[k]);
        msgs[k].role = "system";
        msgs[k].content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
        msgs[k].text = (char *)o->system;
        k++;
    }
    for (size_t i = 0; i < h->n; i++, k++) {
        omnipipe__message__init(&msgs[k]);
        msgs[k].role = h->v[i].role;
        msgs[k].content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
        msgs[k].text = h->v[i].text;
    }
    omnipipe__message__init(&msgs[k]);
    msgs[k].role = "user";
    msgs[k].content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
    msgs[k].text = (char *)user;
    k++;
    for (size_t i = 0; i < k; i++)
        ptrs[i] = &msgs[i];
    Omnipipe__Conversation conv = OMNIPIPE__CONVERSATION__INIT;
    conv.messages = ptrs;
    conv.n_messages = k;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    if (o->max_tokens >= 0) {
        sp.has_max_tokens = true;
        sp.max_tokens = (uint32_t)o->max_tokens;
    }
    if (o->temperature >= 0) {
        sp.has_temperature = true;
        sp.temperature = (float)o->temperature;
    }
    if (o->seed >= 0) {
        sp.has_seed = true;
        sp.seed = (uint64_t)o->seed;
    }
    sp.has_skip_special_tokens = true;
    sp.skip_special_tokens = true;
    Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
    req.conversation = &conv;
    req.sampling = &sp;
    req.has_stream = true;
    req.stream = o->stream;
    req.has_split_reasoning = true;
    req.split_reasoning = true;
    uint64_t id;
    int r = om_client_submit(c, &req, (uint64_t)o->deadline_ms, &id);
    free(msgs);
    free(ptrs);
    if (r < 0)
        return r;
    for (;;) {
        om_client_event_t ev;
        r = om_client_poll(c, 1000, &ev);
        if (r < 0)
            return r;
        if (r == 0 || ev.request_id != id)
            continue;
        if (ev.kind == OM_CLIENT_DELTA) {
            const Omnipipe__TextDelta *d = ev.env->delta;
            if (d->has_text)
                fwrite(d->text.data, 1, d->text.len, stdout);
            fflush(stdout);
        } else if (ev.kind == OM_CLIENT_FINAL) {
            const Omnipipe__Final *f = ev.env->final;
            const char *text = f->has_text ? (const char *)f->text.data : "";
            size_t text_len = f->has_text ? f->text.len : 0;
            if (!o->stream)
                fwrite(text, 1, text_len, stdout);
            fputc('\n', stdout);
            fflush(stdout);
            s_push(h, "user", user, strlen(user));
            s_push(h, "assistant", text, text_len);
            return 0;
        } else {
            const Omnipipe__Status *st = ev.env->status;
            fprintf(stdout, "\n");
            fflush(stdout);
            fprintf(stderr, "omnipipe chat: error %s from stage '%s'%s: %s\n", om_code_name((int)st->code),
                    st->stage ? st->stage : "?", st->retryable ? " (retryable)" : "",
                    st->message ? st->message : "");
            return 1;
        }
    }
}

static void s_usage(void) {
    printf("usage: omnipipe chat [--runtime-dir D] [--script FILE] [--system S] [--max-tokens N]\n"
           "                     [--temperature T] [--seed S] [--deadline-ms N] [--no-stream]\n"
           "                     [--tokenizer-endpoint EP] [--decoder-endpoint EP]\n"
           "  endpoints default to $OMNIPIPE_ENDPOINT_TOKENIZER / $OMNIPIPE_ENDPOINT_DECODER (as the\n"
           "  daemons read them), else ipc:// sockets in the runtime dir; tcp://HOST:PORT works too\n");
}

int cmd_chat(int argc, char **argv) {
    enum { O_RT = 1000, O_SCRIPT, O_SYSTEM, O_MAXTOK, O_TEMP, O_SEED, O_DEADLINE, O_NOSTREAM, O_HELP,
           O_TOK_EP, O_DEC_EP };
    static const struct option longopts[] = {
        {"runtime-dir", required_argument, NULL, O_RT},   {"script", required_argument, NULL, O_SCRIPT},
        {"system", required_argument, NULL, O_SYSTEM},    {"max-tokens", required_argument, NULL, O_MAXTOK},
        {"temperature", required_argument, NULL, O_TEMP}, {"seed", required_argument, NULL, O_SEED},
        {"deadline-ms", required_argument, NULL, O_DEADLINE}, {"no-stream", no_argument, NULL, O_NOSTREAM},
        {"tokenizer-endpoint", required_argument, NULL, O_TOK_EP},
        {"decoder-endpoint", required_argument, NULL, O_DEC_EP},
        {"help", no_argument, NULL, O_HELP},              {NULL, 0, NULL, 0},
    };
    const char *rt = NULL, *script = NULL;
    const char *tok_ep = getenv("OMNIPIPE_ENDPOINT_TOKENIZER"), *dec_ep = getenv("OMNIPIPE_ENDPOINT_DECODER");
    chat_opts_t o = {.max_tokens = -1, .temperature = -1, .seed = -1, .stream = true};
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end = NULL;
        switch (opt) {
        case O_RT: rt = optarg; break;
        case O_SCRIPT: script = optarg; break;
        case O_SYSTEM: o.system = optarg; break;
        case O_MAXTOK: o.max_tokens = strtol(optarg, &end, 10); break;
        case O_TEMP: o.temperature = strtod(optarg, &end); break;
        case O_SEED: o.seed = strtoll(optarg, &end, 10); break;
        case O_DEADLINE: o.deadline_ms = strtol(optarg, &end, 10); break;
        case O_NOSTREAM: o.stream = false; break;
        case O_TOK_EP: tok_ep = optarg; break;
        case O_DEC_EP: dec_ep = optarg; break;
        case O_HELP: s_usage(); return 0;
        default: s_usage(); return 2;
        }
        if (end && (*end || end == optarg)) {
            fprintf(stderr, "omnipipe chat: '%s' is not a number\n", optarg);
            return 2;
        }
    }
    if (optind < argc) {
        s_usage();
        return 2;
    }
    FILE *in = stdin;
    if (script && !(in = fopen(script, "re"))) {
        fprintf(stderr, "omnipipe chat: cannot open script '%s': %s\n", script, strerror(errno));
        return 1;
    }
    char err[512];
    om_client_t *c = NULL;
    om_client_opts_t co = {.runtime_dir = rt,
                           .tokenizer_ep = tok_ep && *tok_ep ? tok_ep : NULL,
                           .decoder_ep = dec_ep && *dec_ep ? dec_ep : NULL};
    int r = om_client_new(&co, &c, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "omnipipe chat: %s\n", err);
        if (in != stdin)
            fclose(in);
        return 1;
    }
    bool tty = !script && isatty(STDIN_FILENO);
    chat_history_t h = {0};
    int failures = 0;
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, in);
        if (n < 0)
            break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (strcmp(line, "/exit") == 0 || strcmp(line, "/quit") == 0)
            break;
        if (strcmp(line, "/reset") == 0) {
            s_clear(&h);
            continue;
        }
        if (script) {
            printf("> %s\n", line);
            fflush(stdout);
        }
        r = s_turn(c, &h, &o, line);
        if (r < 0) {
            fprintf(stderr, "omnipipe chat: %s\n", strerror(-r));
            failures++;
            break;
        }
        failures += r;
    }
    free(line);
    s_clear(&h);
    free(h.v);
    om_client_free(c);
    if (in != stdin)
        fclose(in);
    return failures ? 1 : 0;
}

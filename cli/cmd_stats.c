/* cmd_stats.c: `omnipipe stats [--runtime-dir D] [--timeout-ms N]`: asks the running pipeline for
 * its load (om_client_stats: tokenizer -> mm_prep, which answers with every live engine's latest
 * EngineLoad and its own counters) and prints it as one JSON object:
 *   {"stage": "mm_prep", "engines": [{"engine_id", "running", "waiting", "max_running", "credits",
 *    "kv_blocks_total", "kv_blocks_free", "prefix_cache_hits", "prefix_cache_queries"}, ...],
 *    "counters": {"engines": N, "inflight": N, "queued": N, "dropped": N, "malformed": N}}
 * Exit 0 with an answer, 1 when none came within the timeout (default 3000 ms), 2 on a usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "om_client.h"
#include "om_time.h"

static void s_usage(FILE *f) {
    fprintf(f, "usage: omnipipe stats [--runtime-dir D] [--timeout-ms N]\n"
               "  prints the engines' load (KV blocks, running, prefix cache) and mm_prep's counters as JSON\n");
}

static json_t *s_reply_json(const Omnipipe__StatsReply *sr) {
    json_t *engines = json_array(), *counters = json_object();
    for (size_t i = 0; i < sr->n_engines; i++) {
        const Omnipipe__EngineLoad *l = sr->engines[i];
        json_array_append_new(
            engines, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "engine_id",
                               l->engine_id ? l->engine_id : "", "running", (json_int_t)l->running, "waiting",
                               (json_int_t)l->waiting, "max_running", (json_int_t)l->max_running, "credits",
                               (json_int_t)l->credits, "kv_blocks_total", (json_int_t)l->kv_blocks_total,
                               "kv_blocks_free", (json_int_t)l->kv_blocks_free, "prefix_cache_hits",
                               (json_int_t)l->prefix_cache_hits, "prefix_cache_queries",
                               (json_int_t)l->prefix_cache_queries));
    }
    for (size_t i = 0; i < sr->n_counters; i++)
        if (sr->counters[i]->key)
            json_object_set_new(counters, sr->counters[i]->key, json_integer((json_int_t)sr->counters[i]->value));
    return json_pack("{s:s, s:o, s:o}", "stage", sr->stage ? sr->stage : "", "engines", engines, "counters",
                     counters);
}

int cmd_stats(int argc, char **argv) {
    enum { O_RT = 1000, O_TIMEOUT, O_HELP };
    static const struct option longopts[] = {
        {"runtime-dir", required_argument, NULL, O_RT},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *rt = NULL;
    long timeout_ms = 3000;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end = NULL;
        switch (opt) {
        case O_RT: rt = optarg; break;
        case O_TIMEOUT:
            timeout_ms = strtol(optarg, &end, 10);
            if (*end || end == optarg || timeout_ms <= 0) {
                fprintf(stderr, "omnipipe stats: --timeout-ms: expected a positive number of ms, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case O_HELP: s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        s_usage(stderr);
        return 2;
    }
    char err[512];
    om_client_t *c = NULL;
    om_client_opts_t co = {.runtime_dir = rt};
    if (om_client_new(&co, &c, err, sizeof err) < 0) {
        fprintf(stderr, "omnipipe stats: %s\n", err);
        return 1;
    }
    /* fire and forget, refused until the tokenizer is connected: ask every 200 ms until answered */
    uint64_t end = om_time_mono_ms() + (uint64_t)timeout_ms, next = 0;
    int rc = 1;
    while (om_time_mono_ms() < end) {
        if (om_time_mono_ms() >= next) {
            om_client_stats(c);
            next = om_time_mono_ms() + 200;
        }
        om_client_event_t ev;
        int r = om_client_poll(c, 50, &ev);
        if (r < 0) {
            fprintf(stderr, "omnipipe stats: %s\n", strerror(-r));
            break;
        }
        if (r == 1 && ev.kind == OM_CLIENT_STATS) {
            json_t *j = s_reply_json(ev.env->control->stats_reply);
            char *s = j ? json_dumps(j, JSON_PRESERVE_ORDER) : NULL;
            if (s) {
                printf("%s\n", s);
                rc = 0;
            }
            free(s);
            json_decref(j);
            break;
        }
    }
    if (rc != 0 && om_time_mono_ms() >= end)
        fprintf(stderr, "omnipipe stats: no answer from the pipeline within %ld ms (is it running? omnipipe up)\n",
                timeout_ms);
    om_client_free(c);
    return rc;
}

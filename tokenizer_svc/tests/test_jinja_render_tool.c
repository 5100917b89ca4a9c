/* test_jinja_render_tool.c: the C side of the jinja2 oracle test (test_jinja_oracle.py).
 *
 * Reads JSON lines {"id": any, "template": "<jinja source>", "vars": {...}} from stdin and writes one
 * line per input: {"id": ..., "text": "<rendered>"} or {"id": ..., "error": "<message>"}. Templates
 * are cached by source so a suite of many conversations parses each template once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tok_jinja.h"

#define N_CACHE 64

int main(void) {
    char *src_cache[N_CACHE] = {0};
    tok_jinja_t *tpl_cache[N_CACHE] = {0};
    size_t n_cache = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t jerr;
        json_t *in = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &jerr);
        if (!in) {
            fprintf(stderr, "bad input line: %s\n", jerr.text);
            rc = 1;
            break;
        }
        json_t *out = json_object();
        json_object_set(out, "id", json_object_get(in, "id"));
        const char *src = json_string_value(json_object_get(in, "template"));
        char err[512] = "";
        tok_jinja_t *t = NULL;
        int r = 0;
        if (!src) {
            r = -EINVAL;
            snprintf(err, sizeof(err), "no template");
        } else {
            for (size_t i = 0; i < n_cache; i++)
                if (!strcmp(src_cache[i], src))
                    t = tpl_cache[i];
            if (!t) {
                r = tok_jinja_new(src, strlen(src), &t, err, sizeof(err));
                if (r == 0 && n_cache < N_CACHE) {
                    src_cache[n_cache] = strdup(src);
                    tpl_cache[n_cache++] = t;
                }
            }
        }
        if (r == 0) {
            char *text = NULL;
            size_t len = 0;
            r = tok_jinja_render(t, json_object_get(in, "vars"), &text, &len, err, sizeof(err));
            if (r == 0)
                json_object_set_new(out, "text", json_stringn(text, len));
            free(text);
            int cached = 0;
            for (size_t i = 0; i < n_cache; i++)
                cached |= tpl_cache[i] == t;
            if (!cached)
                tok_jinja_free(t);
        }
        if (r != 0)
            json_object_set_new(out, "error", json_string(err));
        char *s = json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII);
        printf("%s\n", s);
        fflush(stdout);
        free(s);
        json_decref(out);
        json_decref(in);
    }
    free(line);
    for (size_t i = 0; i < n_cache; i++) {
        free(src_cache[i]);
        tok_jinja_free(tpl_cache[i]);
    }
    return rc;
}

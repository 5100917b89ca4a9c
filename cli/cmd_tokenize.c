/* cmd_tokenize.c: `omnipipe tokenize --model DIR [--jsonl]`: encodes stdin with the checkpoint's
 * tokenizer (tokenizer(text, add_special_tokens=False) in transformers terms).
 *   default   all of stdin is one UTF-8 text; prints its ids as one JSON array and a newline.
 *   --jsonl   each stdin line is {"text": ...}; each output line is {"ids": [...]}. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_log.h"
#include "tok_codec.h"

int cmd_tokenize(int argc, char **argv);

/* Reads all of f; returns a malloc'd buffer (NUL-terminated) or NULL. */
static char *cmd_tokenize_slurp(FILE *f, size_t *ret_len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
        if (n + 1 >= cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
            cap *= 2;
        }
    }
    if (!buf || ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *ret_len = n;
    return buf;
}

static void cmd_tokenize_print_ids(FILE *out, const int32_t *ids, size_t n)
{
    fputc('[', out);
    for (size_t i = 0; i < n; i++)
        fprintf(out, i ? ", %d" : "%d", ids[i]);
    fputc(']', out);
}

static void cmd_tokenize_usage(FILE *f)
{
    fprintf(f, "usage: omnipipe tokenize --model DIR [--jsonl]\n"
               "  reads UTF-8 text on stdin and prints its token ids as a JSON array;\n"
               "  --jsonl: stdin lines {\"text\": ...} -> stdout lines {\"ids\": [...]}\n");
}

static int cmd_tokenize_jsonl(const tok_codec_t *c, FILE *in, FILE *out)
{
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k == len)
            continue;
        json_error_t je;
        json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, &je);
        json_t *t = json_object_get(j, "text");
        if (!j || !json_is_string(t)) {
            om_log_err("tokenize: stdin line %zu: %s", lineno,
                       j ? "expected an object with a string \"text\"" : je.text);
            json_decref(j);
            rc = 1;
            break;
        }
        int32_t *ids = NULL;
        size_t nids = 0;
        int r = tok_codec_encode(c, json_string_value(t), json_string_length(t), &ids, &nids);
        json_decref(j);
        if (r) {
            om_log_err("tokenize: stdin line %zu: text: %s", lineno,
                       r == -EINVAL ? "not valid UTF-8" : strerror(-r));
            rc = 1;
            break;
        }
        fputs("{\"ids\": ", out);
        cmd_tokenize_print_ids(out, ids, nids);
        fputs("}\n", out);
        free(ids);
    }
    free(line);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL;
    bool jsonl = false;
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "m:jh", opts, NULL)) != -1) {
        switch (o) {
        case 'm':
            model = optarg;
            break;
        case 'j':
            jsonl = true;
            break;
        case 'h':
            cmd_tokenize_usage(stdout);
            return 0;
        default:
            cmd_tokenize_usage(stderr);
            return 2;
        }
    }
    if (!model || optind < argc) {
        om_log_err("tokenize: %s", !model ? "--model DIR is required" : "unexpected argument");
        cmd_tokenize_usage(stderr);
        return 2;
    }
    char err[1024] = "";
    tok_codec_t *c = NULL;
    int r = tok_codec_load(model, &c, err, sizeof(err));
    if (r) {
        om_log_err("tokenize: %s", err[0] ? err : strerror(-r));
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = cmd_tokenize_jsonl(c, stdin, stdout);
    } else {
        size_t len = 0;
        char *text = cmd_tokenize_slurp(stdin, &len);
        int32_t *ids = NULL;
        size_t n = 0;
        if (!text) {
            om_log_err("tokenize: reading stdin: %s", strerror(errno ? errno : EIO));
            rc = 1;
        } else if ((r = tok_codec_encode(c, text, len, &ids, &n))) {
            om_log_err("tokenize: stdin: %s", r == -EINVAL ? "not valid UTF-8" : strerror(-r));
            rc = 1;
        } else {
            cmd_tokenize_print_ids(stdout, ids, n);
            fputc('\n', stdout);
        }
        free(ids);
        free(text);
    }
    if (fflush(stdout)) {
        om_log_err("tokenize: writing stdout: %s", strerror(errno));
        rc = 1;
    }
    tok_codec_free(c);
    return rc;
}

/* cmd_detokenize.c: `omnipipe detokenize --model DIR [--keep-special] [--jsonl]`: decodes token ids
 * exactly as transformers' tokenizer.decode(ids, skip_special_tokens=not keep_special).
 *   default   stdin is one JSON array of ids; stdout gets the text's exact bytes (no newline added).
 *   --jsonl   each stdin line is {"ids": [...], "keep_special": bool} (keep_special defaults to the
 *             --keep-special flag); each output line is {"text": ...}.
 * Ids the vocabulary does not have are skipped, as tokenizers does. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "om_log.h"
#include "om_vocab.h"

int cmd_detokenize(int argc, char **argv);

static void cmd_detokenize_usage(FILE *f)
{
    fprintf(f, "usage: omnipipe detokenize --model DIR [--keep-special] [--jsonl]\n"
               "  reads a JSON array of token ids on stdin and writes the decoded text;\n"
               "  --jsonl: stdin lines {\"ids\": [...], \"keep_special\": bool} -> stdout lines {\"text\": ...}\n");
}

/* ids from a JSON array; on error writes a message naming the element into why. */
static int cmd_detokenize_ids(json_t *arr, int32_t **ret, size_t *ret_n, char *why, size_t whylen)
{
    if (!json_is_array(arr)) {
        snprintf(why, whylen, "ids: expected a JSON array of integers");
        return -EINVAL;
    }
    size_t n = json_array_size(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(arr, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX) {
            snprintf(why, whylen, "ids[%zu]: expected an integer in [0, 2^31)", i);
            free(ids);
            return -EINVAL;
        }
        ids[i] = (int32_t)json_integer_value(x);
    }
    *ret = ids;
    *ret_n = n;
    return 0;
}

typedef struct cmd_detokenize_ctx {
    const om_vocab_t *v;
    bool keep_default;  /* --keep-special: a line's keep_special when it has none */
} cmd_detokenize_ctx_t;

/* --jsonl: one stdin line {"ids": [...], "keep_special": bool} -> {"text": ...} */
static int cmd_detokenize_line(void *ctx, const char *line, size_t len, size_t lineno)
{
    const cmd_detokenize_ctx_t *d = ctx;
    char why[256];
    json_error_t je;
    json_t *j = json_loadb(line, len, 0, &je);
    if (!json_is_object(j)) {
        om_log_err("detokenize: stdin line %zu: %s", lineno, j ? "expected a JSON object" : je.text);
        json_decref(j);
        return 1;
    }
    json_t *ks = json_object_get(j, "keep_special");
    if (ks && !json_is_boolean(ks) && !json_is_null(ks)) {
        om_log_err("detokenize: stdin line %zu: keep_special: expected true or false", lineno);
        json_decref(j);
        return 1;
    }
    bool keep = json_is_boolean(ks) ? json_is_true(ks) : d->keep_default;
    int32_t *ids = NULL;
    size_t nids = 0;
    int r = cmd_detokenize_ids(json_object_get(j, "ids"), &ids, &nids, why, sizeof(why));
    json_decref(j);
    if (r) {
        om_log_err("detokenize: stdin line %zu: %s", lineno, r == -EINVAL ? why : strerror(-r));
        return 1;
    }
    char *text = NULL;
    size_t tl = 0;
    r = om_vocab_decode(d->v, ids, nids, !keep, &text, &tl);
    free(ids);
    if (r) {
        om_log_err("detokenize: stdin line %zu: %s", lineno, strerror(-r));
        return 1;
    }
    json_t *o = json_pack("{s:s%}", "text", text, tl);
    free(text);
    if (cmd_util_put_json(stdout, o)) {
        om_log_err("detokenize: stdin line %zu: out of memory", lineno);
        return 1;
    }
    return 0;
}

int cmd_detokenize(int argc, char **argv)
{
    cmd_util_args_t a;
    int rc = cmd_util_args(argc, argv, "detokenize", true, cmd_detokenize_usage, &a);
    if (rc >= 0)
        return rc;
    char err[1024] = "", why[256];
    om_vocab_t *v = NULL;
    int r = om_vocab_load(a.model, &v, err, sizeof(err));
    if (r) {
        om_log_err("detokenize: %s", err[0] ? err : strerror(-r));
        return 1;
    }
    rc = 0;
    if (a.jsonl) {
        cmd_detokenize_ctx_t d = {v, a.keep_special};
        rc = cmd_util_lines(stdin, 0, cmd_detokenize_line, &d);
    } else {
        json_error_t je;
        json_t *j = json_loadf(stdin, 0, &je);
        int32_t *ids = NULL;
        size_t n = 0;
        char *text = NULL;
        size_t tl = 0;
        if (!j) {
            om_log_err("detokenize: stdin:%d:%d: %s", je.line, je.column, je.text);
            rc = 1;
        } else if ((r = cmd_detokenize_ids(j, &ids, &n, why, sizeof(why)))) {
            om_log_err("detokenize: stdin: %s", r == -EINVAL ? why : strerror(-r));
            rc = 1;
        } else if ((r = om_vocab_decode(v, ids, n, !a.keep_special, &text, &tl))) {
            om_log_err("detokenize: %s", strerror(-r));
            rc = 1;
        } else if (fwrite(text, 1, tl, stdout) != tl) {
            om_log_err("detokenize: writing stdout: %s", strerror(errno));
            rc = 1;
        }
        free(text);
        free(ids);
        json_decref(j);
    }
    rc = cmd_util_flush("detokenize", rc);
    om_vocab_free(v);
    return rc;
}

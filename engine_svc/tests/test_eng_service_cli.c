/* test_eng_service_cli.c: `omnipipe generate` (cli/cmd_generate.c) on the CPU backend: --ids and
 * --jsonl (one concurrent batch, output in input order) reproduce the transformers golden tokens of
 * the tiny fixtures; a bad sampling field comes back as finish_reason "error" naming the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cmd_generate(int argc, char **argv);

typedef struct t_golden {
    json_t *root;
    json_t *prompts;
    json_t *runs;
} t_golden_t;

static void s_golden(const char *model, t_golden_t *g) {
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/%s/golden.json", OM_SHARED_DIR, model);
    g->root = json_load_file(path, 0, NULL);
    assert_non_null(g->root);
    g->prompts = json_object_get(g->root, "prompts");
    g->runs = json_object_get(json_object_get(g->root, "runs"), "fp32");
}

/* runs cmd_generate with stdin from `in` (may be NULL); returns the exit code, output in *ret */
static int s_run(char **argv, int argc, const char *in, char **ret) {
    char out_path[] = "/tmp/test_eng_cli_outXXXXXX", in_path[] = "/tmp/test_eng_cli_inXXXXXX";
    int out_fd = mkstemp(out_path);
    assert_true(out_fd >= 0);
    int saved_out = dup(1), saved_in = -1;
    if (in) {
        int in_fd = mkstemp(in_path);
        assert_true(in_fd >= 0);
        assert_int_equal(write(in_fd, in, strlen(in)), (ssize_t)strlen(in));
        lseek(in_fd, 0, SEEK_SET);
        saved_in = dup(0);
        dup2(in_fd, 0);
        close(in_fd);
        clearerr(stdin);
    }
    fflush(stdout);
    dup2(out_fd, 1);
    int rc = cmd_generate(argc, argv);
    fflush(stdout);
    dup2(saved_out, 1);
    close(saved_out);
    if (in) {
        dup2(saved_in, 0);
        close(saved_in);
        clearerr(stdin);
        unlink(in_path);
    }
    off_t len = lseek(out_fd, 0, SEEK_END);
    lseek(out_fd, 0, SEEK_SET);
    char *buf = calloc(1, (size_t)len + 1);
    assert_int_equal(read(out_fd, buf, (size_t)len), (ssize_t)len);
    close(out_fd);
    unlink(out_path);
    *ret = buf;
    return rc;
}

static void s_expect_tokens(json_t *line, json_t *want_tokens, const char *finish) {
    assert_non_null(line);
    json_t *toks = json_object_get(line, "tokens");
    assert_string_equal(json_string_value(json_object_get(line, "finish_reason")), finish);
    assert_int_equal(json_array_size(toks), json_array_size(want_tokens));
    for (size_t i = 0; i < json_array_size(toks); i++)
        assert_int_equal(json_integer_value(json_array_get(toks, i)),
                         json_integer_value(json_array_get(want_tokens, i)));
}

static void test_ids(void **state) {
    (void)state;
    t_golden_t g;
    s_golden("tiny-qwen3", &g);
    char ids[2048] = "";
    json_t *p = json_array_get(g.prompts, 1);
    for (size_t i = 0; i < json_array_size(p); i++)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), i ? ",%lld" : "%lld",
                 (long long)json_integer_value(json_array_get(p, i)));
    char model[1024];
    snprintf(model, sizeof model, "%s/fixtures/tiny-qwen3", OM_SHARED_DIR);
    char *argv[] = {"generate", "--model", model, "--backend", "cpu", "--ids", ids,
                    "--max-new-tokens", "24", "--ignore-eos", "--threads", "1", NULL};
    char *out = NULL;
    assert_int_equal(s_run(argv, 12, NULL, &out), 0);
    json_t *line = json_loads(out, 0, NULL);
    s_expect_tokens(line, json_object_get(json_array_get(g.runs, 1), "tokens"), "length");
    json_decref(line);
    free(out);
    json_decref(g.root);
}

static void test_jsonl(void **state) {
    (void)state;
    t_golden_t g;
    s_golden("tiny-qwen3-moe", &g);
    size_t n = json_array_size(g.prompts);
    size_t cap = 65536, len = 0;
    char *in = calloc(1, cap);
    for (size_t i = n; i-- > 0;) { /* reverse order, so output order is checked */
        char *ids = json_dumps(json_array_get(g.prompts, i), JSON_COMPACT);
        len += (size_t)snprintf(in + len, cap - len,
                                "{\"ids\": %s, \"max_new_tokens\": 24, \"ignore_eos\": true}\n", ids);
        free(ids);
    }
    len += (size_t)snprintf(in + len, cap - len,
                            "{\"ids\": [1, 2, 3], \"max_new_tokens\": 4, \"top_p\": 1.5, "
                            "\"temperature\": 0.7}\n");
    char model[1024];
    snprintf(model, sizeof model, "%s/fixtures/tiny-qwen3-moe", OM_SHARED_DIR);
    char *argv[] = {"generate", "--model", model, "--jsonl", "--threads", "1", NULL};
    char *out = NULL;
    assert_int_equal(s_run(argv, 6, in, &out), 1); /* one line failed */
    char *save = NULL, *l = strtok_r(out, "\n", &save);
    for (size_t k = 0; k < n; k++) {
        assert_non_null(l);
        json_t *line = json_loads(l, 0, NULL);
        size_t i = n - 1 - k;
        s_expect_tokens(line, json_object_get(json_array_get(g.runs, i), "tokens"), "length");
        json_decref(line);
        l = strtok_r(NULL, "\n", &save);
    }
    assert_non_null(l);
    json_t *line = json_loads(l, 0, NULL);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "finish_reason")), "error");
    json_t *e = json_object_get(line, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "INVALID_ARGUMENT");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "sampling.top_p: must be in (0, 1], got 1.5");
    json_decref(line);
    assert_null(strtok_r(NULL, "\n", &save));
    free(out);
    free(in);
    json_decref(g.root);
}

static void test_usage(void **state) {
    (void)state;
    char *argv[] = {"generate", "--ids", "1,2", NULL};
    char *out = NULL;
    assert_int_equal(s_run(argv, 3, NULL, &out), 2); /* no --model */
    assert_string_equal(out, "");
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_jsonl),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* bench_util.c: helpers shared by the pipeline benchmarks (see bench_util.h). */
#include "bench_util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

uint64_t bench_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_pct(const double *v, size_t n, double p) {
    if (n == 0)
        return 0;
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    return v[(k > n ? n : k) - 1];
}

int bench_self_dir(char *buf, size_t len) {
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0)
        return -errno;
    buf[n] = '\0';
    char *s = strrchr(buf, '/');
    if (!s)
        return -ENOENT;
    *s = '\0';
    return 0;
}

int bench_vocab_size(const char *prog, const char *model, int64_t *ret) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", model);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    if (!c) {
        fprintf(stderr, "%s: --model: %s: %s\n", prog, path, je.text);
        return -EINVAL;
    }
    json_t *v = json_object_get(c, "vocab_size");
    if (!json_is_integer(v))
        v = json_object_get(json_object_get(c, "text_config"), "vocab_size");
    if (!json_is_integer(v))
        v = json_object_get(json_object_get(json_object_get(c, "thinker_config"), "text_config"), "vocab_size");
    int r = json_is_integer(v) && json_integer_value(v) > 16 ? 0 : -EINVAL;
    if (r == 0)
        *ret = json_integer_value(v);
    else
        fprintf(stderr, "%s: --model: %s has no vocab_size\n", prog, path);
    json_decref(c);
    return r;
}

int bench_parse_u32(const char *prog, const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *ret) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "%s: --%s: expected an integer in %u..%u, got '%s'\n", prog, name, lo, hi, s);
        return -EINVAL;
    }
    *ret = (uint32_t)v;
    return 0;
}

/* test_eng_devices.c (label unit): GPU lists (eng_devices.h): parsing and its errors, how
 * devices / device / tensor_parallel resolve to an engine's GPUs, and `omnipipe up`'s placement of
 * E engines of T GPUs on a list. One line per check. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "eng_devices.h"

static int g_fail;

static void s_check(int ok, const char *what, const char *detail) {
    printf("%-4s %s%s%s\n", ok ? "ok" : "FAIL", what, detail && *detail ? ": " : "",
           detail ? detail : "");
    if (!ok)
        g_fail++;
}

/* resolve and compare with the expected list ("" = expect an error containing `want_err`) */
static void s_resolve(const char *devices, const char *device, const char *tp, const char *want,
                      const char *want_err) {
    int d[ENG_DEVICES_MAX], n = 0;
    char err[512] = "", got[256] = "", what[256];
    int r = eng_devices_resolve(devices, device, tp, d, &n, err, sizeof err);
    if (r == 0)
        eng_devices_format(d, n, got, sizeof got);
    snprintf(what, sizeof what, "resolve devices=%s device=%s tensor_parallel=%s -> %s",
             devices ? devices : "-", device ? device : "-", tp ? tp : "-",
             *want ? want : want_err);
    int ok = *want ? r == 0 && strcmp(got, want) == 0
                   : r == -EINVAL && strstr(err, want_err) != NULL;
    s_check(ok, what, r == 0 ? got : err);
}

static void s_place(const char *list, int engines, int tp, const char *want, const char *want_err) {
    int devs[ENG_DEVICES_MAX], n = 0;
    char err[512] = "", got[512] = "", what[256];
    if (list && eng_devices_parse(list, "--devices", devs, ENG_DEVICES_MAX, &n, err, sizeof err) < 0) {
        s_check(0, "parse for placement", err);
        return;
    }
    int r = 0;
    size_t o = 0;
    for (int e = 0; e < engines && r == 0; e++) {
        int d[ENG_DEVICES_MAX];
        char one[128];
        r = eng_devices_place(list ? devs : NULL, n, engines, tp, e, d, err, sizeof err);
        if (r == 0) {
            eng_devices_format(d, tp, one, sizeof one);
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%s", e ? " | " : "", one);
        }
    }
    snprintf(what, sizeof what, "place --devices %s --engines %d --tensor-parallel %d -> %s",
             list ? list : "-", engines, tp, *want ? want : want_err);
    int ok = *want ? r == 0 && strcmp(got, want) == 0 : r == -EINVAL && strstr(err, want_err);
    s_check(ok, what, r == 0 ? got : err);
}

int main(void) {
    /* parsing */
    int d[ENG_DEVICES_MAX], n = 0;
    char err[512];
    int r = eng_devices_parse(" 2, 3 ,5", "devices", d, ENG_DEVICES_MAX, &n, err, sizeof err);
    s_check(r == 0 && n == 3 && d[0] == 2 && d[1] == 3 && d[2] == 5, "parse ' 2, 3 ,5'", NULL);
    static const struct {
        const char *s, *err;
    } bad[] = {
        {"", "is not a comma-separated list"},      {"1,", "is not a comma-separated list"},
        {"a", "is not a comma-separated list"},     {"1;2", "is not a comma-separated list"},
        {"1,,2", "is not a comma-separated list"},  {"-1", "non-negative"},
        {"0,-2", "non-negative"},                   {"1,1", "listed twice"},
        {"99999", "out of range"},                  {"1.5", "is not a comma-separated list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[128];
        err[0] = 0;
        r = eng_devices_parse(bad[i].s, "devices", d, ENG_DEVICES_MAX, &n, err, sizeof err);
        snprintf(what, sizeof what, "parse '%s' refused (%s)", bad[i].s, bad[i].err);
        s_check(r == -EINVAL && strstr(err, bad[i].err) && strncmp(err, "devices: ", 9) == 0,
                what, err);
    }
    r = eng_devices_parse("0,1,2", "devices", d, 2, &n, err, sizeof err);
    s_check(r == -EINVAL && strstr(err, "more than 2"), "parse: more GPUs than allowed refused", err);

    /* resolution */
    s_resolve(NULL, NULL, NULL, "0", NULL);
    s_resolve(NULL, "3", NULL, "3", NULL);
    s_resolve(NULL, "2", "2", "2,3", NULL);
    s_resolve("2,3", NULL, NULL, "2,3", NULL);
    s_resolve("5", NULL, NULL, "5", NULL);
    s_resolve("3,1", NULL, "2", "3,1", NULL);
    s_resolve("2,3", "2", "2", "2,3", NULL);
    s_resolve("2,3", NULL, "1", "", "devices: '2,3' lists 2 GPUs but tensor_parallel is 1");
    s_resolve("2", NULL, "2", "", "devices: '2' lists 1 GPU but tensor_parallel is 2");
    s_resolve("2,3", "0", NULL, "", "device: 0 conflicts with devices '2,3'");
    s_resolve("2,2", NULL, NULL, "", "devices: GPU 2 is listed twice");
    s_resolve(NULL, NULL, "0", "", "tensor_parallel: '0' is not an integer in [1, 64]");
    s_resolve(NULL, "-1", NULL, "", "device: '-1' is not an integer");

    /* placement for omnipipe up */
    s_place("0,1,2,3", 2, 2, "0,1 | 2,3", NULL);
    s_place("4,5,6,7", 4, 1, "4 | 5 | 6 | 7", NULL);
    s_place("3,2,1,0", 1, 4, "3,2,1,0", NULL);
    s_place(NULL, 2, 2, "0,1 | 2,3", NULL);
    s_place(NULL, 3, 1, "0 | 1 | 2", NULL);
    s_place("0,1,2", 2, 2, "", "devices: 3 GPUs listed, but 2 engines x tensor_parallel 2 use 4");
    s_place("0,1,2,3,4", 2, 2, "", "use 4");

    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}

/* test_eng_nccl.c (label unit, no GPU): eng_nccl's NVLink-multicast guard. Each case runs in a
 * forked child (eng_nccl_open resolves once per process):
 *  1. NCCL_NVLS_ENABLE=1 in the environment: eng_nccl_open refuses with -EPERM naming the
 *     variable, and leaves the value alone;
 *  2. unset: eng_nccl_open sets NCCL_NVLS_ENABLE=0 before loading the library (whether or not
 *     libnccl.so.2 is present here: 0, or -ELIBACC naming libnccl.so.2);
 *  3. NCCL_NVLS_ENABLE=0: kept, not refused. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "eng_nccl.h"

static int g_fail;

static void s_check(int ok, const char *what) {
    printf("%-4s %s\n", ok ? "ok" : "FAIL", what);
    if (!ok)
        g_fail++;
}

/* runs fn in a child with NCCL_NVLS_ENABLE = val (NULL: unset); 1 if the child exits 0 */
static int s_child(const char *val, int (*fn)(void)) {
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        if (val)
            setenv("NCCL_NVLS_ENABLE", val, 1);
        else
            unsetenv("NCCL_NVLS_ENABLE");
        int rc = fn();
        fflush(stdout);
        _exit(rc);
    }
    int st = 0;
    if (p < 0 || waitpid(p, &st, 0) != p)
        return 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static int c_refuse(void) {
    char err[256] = "";
    int r = eng_nccl_open(err, sizeof err);
    const char *v = getenv("NCCL_NVLS_ENABLE");
    if (r != -EPERM || !strstr(err, "NCCL_NVLS_ENABLE") || !v || strcmp(v, "1") != 0) {
        printf("     got %d '%s', NCCL_NVLS_ENABLE=%s\n", r, err, v ? v : "(unset)");
        return 1;
    }
    return 0;
}

static int c_sets_zero(void) {
    char err[256] = "";
    int r = eng_nccl_open(err, sizeof err);
    const char *v = getenv("NCCL_NVLS_ENABLE");
    int lib_ok = r == 0 || (r == -ELIBACC && strstr(err, "libnccl.so.2"));
    if (!lib_ok || !v || strcmp(v, "0") != 0) {
        printf("     got %d '%s', NCCL_NVLS_ENABLE=%s\n", r, err, v ? v : "(unset)");
        return 1;
    }
    printf("     libnccl.so.2 %s\n", r == 0 ? "loaded" : "absent here");
    return 0;
}

static int c_keeps_zero(void) {
    char err[256] = "";
    int r = eng_nccl_open(err, sizeof err);
    const char *v = getenv("NCCL_NVLS_ENABLE");
    return r == -EPERM || !v || strcmp(v, "0") != 0;
}

int main(void) {
    s_check(s_child("1", c_refuse), "NCCL_NVLS_ENABLE=1: refused with -EPERM naming the variable");
    s_check(s_child(NULL, c_sets_zero), "NCCL_NVLS_ENABLE unset: set to 0 before NCCL loads");
    s_check(s_child("0", c_keeps_zero), "NCCL_NVLS_ENABLE=0: accepted and kept");
    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}

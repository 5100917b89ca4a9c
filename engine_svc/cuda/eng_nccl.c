/* eng_nccl.c: NCCL through dlopen (eng_nccl.h). The declarations below mirror nccl.h (2.x ABI:
 * ncclResult_t/ncclDataType_t/ncclRedOp_t are ints; ncclBfloat16 = 9, ncclFloat32 = 7,
 * ncclSum = 0) so that nccl.h is not needed at build time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "eng_nccl.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *nccl_comm_t;
typedef int (*fn_init_all_t)(nccl_comm_t *comms, int ndev, const int *devlist);
typedef int (*fn_destroy_t)(nccl_comm_t comm);
typedef int (*fn_allreduce_t)(const void *send, void *recv, size_t count, int dtype, int op,
                              nccl_comm_t comm, void *stream);
typedef const char *(*fn_errstr_t)(int result);
typedef int (*fn_version_t)(int *version);
typedef int (*fn_abort_t)(nccl_comm_t comm);
typedef int (*fn_async_err_t)(nccl_comm_t comm, int *async_error);

enum { NCCL_SUCCESS = 0, NCCL_IN_PROGRESS = 7, NCCL_BF16 = 9, NCCL_F32 = 7, NCCL_SUM = 0 };

static struct {
    pthread_once_t once;
    int rc;
    char msg[256];
    void *lib;
    int version;
    fn_init_all_t init_all;
    fn_destroy_t destroy;
    fn_allreduce_t allreduce;
    fn_errstr_t errstr;
    fn_abort_t abort_comm;
    fn_async_err_t async_err;
} g = {PTHREAD_ONCE_INIT, 0, "", NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL};

static char g_last[256];

/* dlsym into a function pointer without an object-to-function pointer cast (POSIX idiom). */
static void s_sym(void *fnp, size_t size, const char *name) {
    void *p = dlsym(g.lib, name);
    memcpy(fnp, &p, size < sizeof p ? size : sizeof p);
}

static void s_open_once(void) {
    /* NVLink multicast must stay off on the lent machines: refuse an explicit request for it,
       set it off otherwise (before the library reads its environment). */
    const char *nv = getenv("NCCL_NVLS_ENABLE");
    if (nv && strcmp(nv, "0") != 0) {
        snprintf(g.msg, sizeof g.msg,
                 "NCCL_NVLS_ENABLE=%s: NVLink multicast must stay off; unset it or set it to 0", nv);
        g.rc = -EPERM;
        return;
    }
    if (setenv("NCCL_NVLS_ENABLE", "0", 0) != 0) {
        snprintf(g.msg, sizeof g.msg, "setenv NCCL_NVLS_ENABLE: %s", strerror(errno));
        g.rc = -errno;
        return;
    }
    g.lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!g.lib) {
        snprintf(g.msg, sizeof g.msg,
                 "tensor_parallel > 1 needs NCCL: dlopen libnccl.so.2 failed: %s", dlerror());
        g.rc = -ELIBACC;
        return;
    }
    fn_version_t ver = NULL;
    s_sym(&g.init_all, sizeof g.init_all, "ncclCommInitAll");
    s_sym(&g.destroy, sizeof g.destroy, "ncclCommDestroy");
    s_sym(&g.allreduce, sizeof g.allreduce, "ncclAllReduce");
    s_sym(&g.errstr, sizeof g.errstr, "ncclGetErrorString");
    s_sym(&ver, sizeof ver, "ncclGetVersion");
    s_sym(&g.abort_comm, sizeof g.abort_comm, "ncclCommAbort");
    s_sym(&g.async_err, sizeof g.async_err, "ncclCommGetAsyncError");
    if (!g.init_all || !g.destroy || !g.allreduce || !g.errstr || !ver || !g.abort_comm ||
        !g.async_err) {
        snprintf(g.msg, sizeof g.msg, "libnccl.so.2: missing entry point (ncclCommInitAll, "
                 "ncclCommDestroy, ncclAllReduce, ncclGetErrorString, ncclGetVersion, "
                 "ncclCommAbort or ncclCommGetAsyncError)");
        g.rc = -ELIBACC;
        return;
    }
    if (ver(&g.version) != NCCL_SUCCESS || g.version < 21000) {
        snprintf(g.msg, sizeof g.msg, "libnccl.so.2: version %d, need >= 2.10 (bf16 all-reduce)",
                 g.version);
        g.rc = -EOPNOTSUPP;
        return;
    }
    g.rc = 0;
}

int eng_nccl_open(char *err, size_t errlen) {
    pthread_once(&g.once, s_open_once);
    if (g.rc < 0) {
        snprintf(g_last, sizeof g_last, "%s", g.msg);
        if (err && errlen)
            snprintf(err, errlen, "%s", g.msg);
    }
    return g.rc;
}

int eng_nccl_version(void) {
    return g.rc == 0 && g.lib ? g.version : 0;
}

int eng_nccl_comms_init(int n, const int *devices, void **ret_comms, char *err, size_t errlen) {
    if (n < 1 || !devices || !ret_comms) {
        snprintf(err, errlen, "NCCL: bad communicator request (%d devices)", n);
        return -EINVAL;
    }
    int r = eng_nccl_open(err, errlen);
    if (r < 0)
        return r;
    nccl_comm_t *c = calloc((size_t)n, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "NCCL: out of host memory");
        return -ENOMEM;
    }
    int nr = g.init_all(c, n, devices);
    if (nr != NCCL_SUCCESS) {
        snprintf(g_last, sizeof g_last, "ncclCommInitAll(%d devices from %d): %s", n, devices[0],
                 g.errstr(nr));
        snprintf(err, errlen, "%s", g_last);
        free(c);
        return -EIO;
    }
    for (int i = 0; i < n; i++)
        ret_comms[i] = c[i];
    free(c);
    return 0;
}

void eng_nccl_comm_destroy(void *comm) {
    if (comm && g.destroy)
        g.destroy(comm);
}

int eng_nccl_comm_abort(void *comm) {
    if (!comm || !g.abort_comm)
        return -EINVAL;
    int nr = g.abort_comm(comm);
    if (nr != NCCL_SUCCESS) {
        snprintf(g_last, sizeof g_last, "ncclCommAbort: %s", g.errstr(nr));
        return -EIO;
    }
    return 0;
}

int eng_nccl_comm_async_error(void *comm, char *err, size_t errlen) {
    if (!comm || !g.async_err)
        return -EINVAL;
    int ae = NCCL_SUCCESS;
    int nr = g.async_err(comm, &ae);
    if (nr != NCCL_SUCCESS || (ae != NCCL_SUCCESS && ae != NCCL_IN_PROGRESS)) {
        int code = nr != NCCL_SUCCESS ? nr : ae;
        if (err && errlen)
            snprintf(err, errlen, "ncclCommGetAsyncError: %s (%d)", g.errstr(code), code);
        return -EIO;
    }
    return 0;
}

int eng_nccl_allreduce_sum(void *comm, void *buf, size_t count, int dtype, void *stream) {
    if (!comm || !g.allreduce || (dtype != 0 && dtype != 1)) {
        snprintf(g_last, sizeof g_last, "NCCL all-reduce: no communicator or bad dtype");
        return -EINVAL;
    }
    int nr = g.allreduce(buf, buf, count, dtype == 0 ? NCCL_BF16 : NCCL_F32, NCCL_SUM, comm, stream);
    if (nr != NCCL_SUCCESS) {
        snprintf(g_last, sizeof g_last, "ncclAllReduce(%zu elements): %s", count, g.errstr(nr));
        return -EIO;
    }
    return 0;
}

const char *eng_nccl_last_error(void) {
    return g_last;
}

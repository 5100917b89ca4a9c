/* eng_devices.c: GPU lists of an engine and engine placement (eng_devices.h). */
#include "eng_devices.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b) {
    if (err && errlen)
        snprintf(err, errlen, fmt, a, b);
    return -EINVAL;
}

int eng_devices_parse(const char *s, const char *field, int *ret, int max, int *ret_n, char *err,
                      size_t errlen) {
    if (!field)
        field = "devices";
    if (!s || !ret || !ret_n || max < 1)
        return s_err(err, errlen, "%s: no GPU list%s", field, "");
    int tmp[ENG_DEVICES_MAX], n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '-') {
            if (err && errlen)
                snprintf(err, errlen, "%s: '%s': GPU ids are non-negative", field, s);
            return -EINVAL;
        }
        if (!isdigit((unsigned char)*p)) {
            if (err && errlen)
                snprintf(err, errlen, "%s: '%s' is not a comma-separated list of GPU ids "
                         "(e.g. 0,1)", field, s);
            return -EINVAL;
        }
        char *end = NULL;
        long v = strtol(p, &end, 10);
        if (v >= ENG_DEVICES_MAX_ID) {
            if (err && errlen)
                snprintf(err, errlen, "%s: GPU id %ld in '%s' is out of range [0, %d)", field, v,
                         s, ENG_DEVICES_MAX_ID);
            return -EINVAL;
        }
        if (n == max || n == ENG_DEVICES_MAX) {
            if (err && errlen)
                snprintf(err, errlen, "%s: '%s' lists more than %d GPUs", field, s,
                         max < ENG_DEVICES_MAX ? max : ENG_DEVICES_MAX);
            return -EINVAL;
        }
        for (int i = 0; i < n; i++)
            if (tmp[i] == (int)v) {
                if (err && errlen)
                    snprintf(err, errlen, "%s: GPU %ld is listed twice in '%s'", field, v, s);
                return -EINVAL;
            }
        tmp[n++] = (int)v;
        p = end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == 0)
            break;
        if (*p != ',') {
            if (err && errlen)
                snprintf(err, errlen, "%s: '%s' is not a comma-separated list of GPU ids "
                         "(e.g. 0,1)", field, s);
            return -EINVAL;
        }
        p++;
    }
    memcpy(ret, tmp, (size_t)n * sizeof *ret);
    *ret_n = n;
    return 0;
}

int eng_devices_format(const int *d, int n, char *buf, size_t len) {
    size_t o = 0;
    if (!buf || len == 0)
        return -ENOSPC;
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(buf + o, len - o, "%s%d", i ? "," : "", d[i]);
        if (w < 0 || (size_t)w >= len - o)
            return -ENOSPC;
        o += (size_t)w;
    }
    return 0;
}

/* a decimal value in [lo, hi] */
static int s_int(const char *v, const char *field, long lo, long hi, long *ret, char *err,
                 size_t errlen) {
    char *end = NULL;
    long x = v && isdigit((unsigned char)*v) ? strtol(v, &end, 10) : -1;
    if (!end || *end || x < lo || x > hi) {
        if (err && errlen)
            snprintf(err, errlen, "%s: '%s' is not an integer in [%ld, %ld]", field, v ? v : "",
                     lo, hi);
        return -EINVAL;
    }
    *ret = x;
    return 0;
}

int eng_devices_resolve(const char *devices, const char *device, const char *tensor_parallel,
                        int *ret, int *ret_n, char *err, size_t errlen) {
    long tp = 1, dev = 0;
    int r;
    if (tensor_parallel &&
        (r = s_int(tensor_parallel, "tensor_parallel", 1, ENG_DEVICES_MAX, &tp, err, errlen)) < 0)
        return r;
    if (device && (r = s_int(device, "device", 0, ENG_DEVICES_MAX_ID - 1, &dev, err, errlen)) < 0)
        return r;
    if (devices && *devices) {
        int d[ENG_DEVICES_MAX], n = 0;
        if ((r = eng_devices_parse(devices, "devices", d, ENG_DEVICES_MAX, &n, err, errlen)) < 0)
            return r;
        if (tensor_parallel && tp != n) {
            if (err && errlen)
                snprintf(err, errlen, "devices: '%s' lists %d GPU%s but tensor_parallel is %ld; "
                         "list exactly tensor_parallel GPUs (or leave tensor_parallel unset: it "
                         "defaults to the list's length)", devices, n, n == 1 ? "" : "s", tp);
            return -EINVAL;
        }
        if (device && dev != d[0]) {
            if (err && errlen)
                snprintf(err, errlen, "device: %ld conflicts with devices '%s' (whose first GPU "
                         "is %d); set only devices", dev, devices, d[0]);
            return -EINVAL;
        }
        memcpy(ret, d, (size_t)n * sizeof *ret);
        *ret_n = n;
        return 0;
    }
    if (dev + tp > ENG_DEVICES_MAX_ID) {
        if (err && errlen)
            snprintf(err, errlen, "device: %ld + tensor_parallel %ld is past GPU id %d", dev, tp,
                     ENG_DEVICES_MAX_ID - 1);
        return -EINVAL;
    }
    for (long i = 0; i < tp; i++)
        ret[i] = (int)(dev + i);
    *ret_n = (int)tp;
    return 0;
}

int eng_devices_place(const int *devs, int n_devs, int engines, int tp, int e, int *ret,
                      char *err, size_t errlen) {
    if (engines < 1 || tp < 1 || tp > ENG_DEVICES_MAX || e < 0 || e >= engines) {
        if (err && errlen)
            snprintf(err, errlen, "engines %d x tensor_parallel %d: engine %d does not exist",
                     engines, tp, e);
        return -EINVAL;
    }
    long need = (long)engines * tp;
    if (devs && n_devs != need) {
        if (err && errlen)
            snprintf(err, errlen, "devices: %d GPU%s listed, but %d engine%s x tensor_parallel %d "
                     "use %ld; list exactly engines x tensor_parallel GPUs", n_devs,
                     n_devs == 1 ? "" : "s", engines, engines == 1 ? "" : "s", tp, need);
        return -EINVAL;
    }
    if (!devs && need > ENG_DEVICES_MAX_ID) {
        if (err && errlen)
            snprintf(err, errlen, "engines %d x tensor_parallel %d: more GPUs than ids", engines,
                     tp);
        return -EINVAL;
    }
    for (int i = 0; i < tp; i++)
        ret[i] = devs ? devs[e * tp + i] : e * tp + i;
    return 0;
}

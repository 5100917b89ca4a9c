/* om_err.c: the errno <-> wire Status code table. See om_err.h. */
#include "om_err.h"

#include <errno.h>
#include <stddef.h>

static const struct {
    int err;  /* positive errno */
    int code; /* enum om_code */
    bool retryable;
} s_table[] = {
    {EINVAL, OM_CODE_INVALID_ARGUMENT, false},   {E2BIG, OM_CODE_TOO_LARGE, false},
    {EMSGSIZE, OM_CODE_TOO_LARGE, false},        {ENOMEM, OM_CODE_RESOURCE_EXHAUSTED, true},
    {EBUSY, OM_CODE_RESOURCE_EXHAUSTED, true},   {ENOSPC, OM_CODE_RESOURCE_EXHAUSTED, true},
    {EAGAIN, OM_CODE_RESOURCE_EXHAUSTED, true},  {ETIMEDOUT, OM_CODE_DEADLINE_EXCEEDED, false},
    {ECANCELED, OM_CODE_CANCELLED, false},       {EHOSTDOWN, OM_CODE_UNAVAILABLE, true},
    {ECONNREFUSED, OM_CODE_UNAVAILABLE, true},   {ENOTCONN, OM_CODE_UNAVAILABLE, true},
    {EPIPE, OM_CODE_UNAVAILABLE, true},          {ECONNRESET, OM_CODE_UNAVAILABLE, true},
    {EHOSTUNREACH, OM_CODE_UNAVAILABLE, true},   {EOPNOTSUPP, OM_CODE_UNIMPLEMENTED, false},
    {ENOSYS, OM_CODE_UNIMPLEMENTED, false},      {EPROTO, OM_CODE_PROTOCOL, false},
    {EBADMSG, OM_CODE_PROTOCOL, false},          {ENOENT, OM_CODE_NOT_FOUND, false},
    {EIO, OM_CODE_INTERNAL, false},
};

/* canonical errno for each code, in enum order */
static const int s_canonical[OM_CODE_COUNT_] = {
    0, EINVAL, E2BIG, ENOMEM, ETIMEDOUT, ECANCELED, EHOSTDOWN, EOPNOTSUPP, EPROTO, EIO, ENOENT,
};

static const char *const s_names[OM_CODE_COUNT_] = {
    "OK",        "INVALID_ARGUMENT", "TOO_LARGE",     "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
    "CANCELLED", "UNAVAILABLE",      "UNIMPLEMENTED", "PROTOCOL",           "INTERNAL",
    "NOT_FOUND",
};

int om_err_to_code(int neg_errno) {
    if (neg_errno >= 0)
        return OM_CODE_OK;
    for (size_t i = 0; i < sizeof s_table / sizeof s_table[0]; i++)
        if (s_table[i].err == -neg_errno)
            return s_table[i].code;
    return OM_CODE_INTERNAL;
}

int om_err_from_code(int code) {
    if (code <= 0 || code >= OM_CODE_COUNT_)
        return code == 0 ? 0 : -EIO;
    return -s_canonical[code];
}

bool om_err_retryable(int neg_errno) {
    for (size_t i = 0; i < sizeof s_table / sizeof s_table[0]; i++)
        if (s_table[i].err == -neg_errno)
            return s_table[i].retryable;
    return false;
}

const char *om_code_name(int code) {
    if (code < 0 || code >= OM_CODE_COUNT_)
        return "UNKNOWN";
    return s_names[code];
}

/* om_err.h: the one table between in-process errors (negative errno) and the wire Status codes.
 *
 * In process every function returns 0 (or a count) or -Exxx. On the wire errors are
 * omnipipe.Status {code, message, stage, retryable}. This file is the only place that maps between
 * the two (om_err_to_code / om_err_from_code), so errno numbers never go onto the wire.
 *
 *   -EINVAL       INVALID_ARGUMENT     bad request field
 *   -E2BIG        TOO_LARGE            too many tokens/pixels
 *   -ENOMEM/-EBUSY/-ENOSPC RESOURCE_EXHAUSTED (retryable)
 *   -ETIMEDOUT    DEADLINE_EXCEEDED
 *   -ECANCELED    CANCELLED
 *   -EHOSTDOWN/-ECONNREFUSED/-ENOTCONN/-EPIPE UNAVAILABLE (retryable)
 *   -EOPNOTSUPP   UNIMPLEMENTED
 *   -EPROTO/-EBADMSG PROTOCOL
 *   -ENOENT       NOT_FOUND
 *   anything else INTERNAL
 */
#ifndef OM_ERR_H
#define OM_ERR_H

#include <stdbool.h>

enum om_code {
    OM_CODE_OK = 0,
    OM_CODE_INVALID_ARGUMENT = 1,
    OM_CODE_TOO_LARGE = 2,
    OM_CODE_RESOURCE_EXHAUSTED = 3,
    OM_CODE_DEADLINE_EXCEEDED = 4,
    OM_CODE_CANCELLED = 5,
    OM_CODE_UNAVAILABLE = 6,
    OM_CODE_UNIMPLEMENTED = 7,
    OM_CODE_PROTOCOL = 8,
    OM_CODE_INTERNAL = 9,
    OM_CODE_NOT_FOUND = 10,
    OM_CODE_COUNT_
};

int om_err_to_code(int neg_errno);    /* -EINVAL -> OM_CODE_INVALID_ARGUMENT; 0 -> OK */
int om_err_from_code(int code);       /* OM_CODE_INVALID_ARGUMENT -> -EINVAL (canonical errno) */
bool om_err_retryable(int neg_errno); /* whether a client may retry the same request */
const char *om_code_name(int code);   /* "INVALID_ARGUMENT"; "UNKNOWN" out of range */

#endif

/* eng_devices.h: which GPUs an engine uses (`devices`, `device`, `tensor_parallel`) and how
 * `omnipipe up` places several engines on a list of GPUs. Pure functions (no CUDA): whether a
 * GPU exists is checked where the device count is known (engine_svc at start, eng_cuda_tp_load).
 *
 * Rules (docs/engine.md "Choosing GPUs"):
 *  - `devices` = "2,3": the engine uses exactly these GPUs, rank i on the i-th; the degree of
 *    tensor parallelism is the list's length. An explicit `tensor_parallel` must equal it, and an
 *    explicit `device` must equal the first entry (else an error naming the fields).
 *  - no `devices`: GPUs device .. device+tensor_parallel-1 (defaults 0 and 1), as before.
 *  - ids are decimal, non-negative, < ENG_DEVICES_MAX_ID, unique; at most ENG_DEVICES_MAX of them.
 *  - placement: with a list L, E engines of T GPUs each take L[e·T .. e·T+T-1]; L must hold
 *    exactly E·T GPUs. Without a list, L = 0 .. E·T-1.
 *
 * Errors: 0 or -EINVAL with err naming the field ("devices: ..."). */
#ifndef ENG_DEVICES_H
#define ENG_DEVICES_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ENG_DEVICES_MAX 64       /* GPUs per engine (= the tensor-parallel limit) and per list */
#define ENG_DEVICES_MAX_ID 1024

/* Parses "a,b,c" (spaces around ids allowed) into ret (max entries); `field` names the value in
 * errors (e.g. "devices", "--devices"). */
int eng_devices_parse(const char *s, const char *field, int *ret, int max, int *ret_n, char *err,
                      size_t errlen);
/* "a,b,c"; -ENOSPC if it does not fit. */
int eng_devices_format(const int *d, int n, char *buf, size_t len);
/* An engine's GPUs from its configuration values (NULL = not set): ret (ENG_DEVICES_MAX) gets
 * the devices, *ret_n the tensor-parallel degree. */
int eng_devices_resolve(const char *devices, const char *device, const char *tensor_parallel,
                        int *ret, int *ret_n, char *err, size_t errlen);
/* `omnipipe up`: engine e (0 .. engines-1) of `engines`, each on tp GPUs, from the list devs
 * (n_devs; NULL = 0, 1, 2, ...): ret (tp entries). */
int eng_devices_place(const int *devs, int n_devs, int engines, int tp, int e, int *ret,
                      char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif

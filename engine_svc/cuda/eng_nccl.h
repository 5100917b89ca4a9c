/* eng_nccl.h: NCCL loaded at run time (dlopen "libnccl.so.2") for the tensor-parallel runner
 * (eng_cuda_tp.cu). The handful of entry points used are declared in eng_nccl.c, so engine_svc builds
 * without nccl.h and runs without libnccl when tensor_parallel is 1; asking for more GPUs without
 * the library is a clear error at load.
 *
 * Safety: NVLink multicast (NVLS) stays off. eng_nccl_open() sets NCCL_NVLS_ENABLE=0 in the process
 * environment before the library is loaded (an explicit user value is kept only if it is "0") and
 * refuses (-EPERM) when the environment asks for NVLS; nothing here calls cuMulticastCreate.
 *
 * Errors: 0 or -errno; eng_nccl_last_error() holds the message of the last failure (borrowed). */
#ifndef ENG_NCCL_H
#define ENG_NCCL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sets NCCL_NVLS_ENABLE=0, loads libnccl.so.2 and resolves the entry points (once; later calls
 * return the first result). -EPERM: NCCL_NVLS_ENABLE set to something other than "0";
 * -ELIBACC: no libnccl.so.2 (or a missing symbol). err names the cause. */
int eng_nccl_open(char *err, size_t errlen);
/* NCCL version code (e.g. 22803 for 2.28.3); 0 before a successful eng_nccl_open(). */
int eng_nccl_version(void);
/* One communicator per device of `devices` (n >= 1), rank i on devices[i] (ncclCommInitAll, one
 * process). ret_comms: n opaque ncclComm_t, written only on success. */
int eng_nccl_comms_init(int n, const int *devices, void **ret_comms, char *err, size_t errlen);
void eng_nccl_comm_destroy(void *comm);
/* ncclCommAbort: the communicator's kernels that wait for peers return, and the communicator is
 * freed (never destroy or use it afterwards). Callable from another thread than the one issuing
 * on the communicator, but not while that thread is inside an NCCL call on it (eng_tp_watch.h).
 * 0 or -EIO. */
int eng_nccl_comm_abort(void *comm);
/* ncclCommGetAsyncError: 0 while the communicator is healthy (or still in progress), -EIO with
 * err naming NCCL's error otherwise. Non-blocking. */
int eng_nccl_comm_async_error(void *comm, char *err, size_t errlen);
/* In-place sum all-reduce of `count` bf16 (dtype 0) or f32 (dtype 1) elements of device memory
 * `buf` on the CUDA stream `stream` (cudaStream_t); capturable into CUDA graphs. 0 or -EIO. */
int eng_nccl_allreduce_sum(void *comm, void *buf, size_t count, int dtype, void *stream);
const char *eng_nccl_last_error(void);

#ifdef __cplusplus
}
#endif

#endif

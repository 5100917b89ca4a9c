/* bench_util.h: small helpers shared by the pipeline benchmarks (pipeline_bench, replica_bench):
 * deterministic prompt ids, percentiles, the program's own directory, the model's vocabulary size and
 * flag parsing. Errors are printed to stderr prefixed with the calling program's name. */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64 step: the next pseudo-random 64-bit value of the state *x */
uint64_t bench_splitmix(uint64_t *x);
/* qsort comparator of doubles, ascending */
int bench_cmp_double(const void *a, const void *b);
/* the p-th percentile (0..100, nearest rank) of v[0..n) sorted ascending; 0 when n == 0 */
double bench_pct(const double *v, size_t n, double p);
/* the directory of the running executable into buf; 0 or -errno */
int bench_self_dir(char *buf, size_t len);
/* vocab_size of MODEL/config.json (top level, text_config or thinker_config.text_config); 0 or -EINVAL */
int bench_vocab_size(const char *prog, const char *model, int64_t *ret);
/* the decimal flag value s of --name within lo..hi; 0 or -EINVAL (printed) */
int bench_parse_u32(const char *prog, const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *ret);

#endif

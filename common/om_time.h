/* om_time.h: the two clocks omnipipe uses, read only by main loops and the transport choke point.
 * Handlers never read clocks; they get now_ms (wall clock ms since the epoch, the clock of
 * Header.deadline_unix_ms) as an argument. Monotonic ns are for stage timestamps and timers. */
#ifndef OM_TIME_H
#define OM_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t om_time_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t om_time_mono_ms(void) { return om_time_mono_ns() / 1000000ull; }

static inline uint64_t om_time_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

static inline uint64_t om_time_wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000ull;
}

#endif

/* testd.h: test harness that runs real daemons: a temp runtime dir, fork/exec of the build/bin daemons with
 * a NOTIFY_SOCKET owned by the test (so READY=1 arrives through the real sd_notify path), kill and
 * restart of single stages, and clean shutdown. Used by the integration, fault and replay tests. */
#ifndef TESTD_H
#define TESTD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define TESTD_MAX 12

typedef struct testd {
    char rt[256];            /* runtime dir (ipc sockets) */
    char bindir[1024];       /* where the daemons are */
    char model[1024];        /* model dir */
    char record[512];        /* --record dir or "" */
    int nfd;                 /* notify socket */
    char notify[108];        /* its NOTIFY_SOCKET name */
    pid_t pid[TESTD_MAX];    /* 0 = not running */
    char name[TESTD_MAX][32];
    size_t n;
    unsigned heartbeat_ms;   /* passed to every daemon */
    unsigned watchdog_usec;  /* WATCHDOG_USEC for started daemons, 0 = none */
} testd_t;

/* tag names the temp dir; model NULL = $OM_SHARED_DIR/fixtures/tiny-omni. */
int testd_init(testd_t *d, const char *tag, const char *model);
/* Starts name ("tokenizer", "mm_prep", "engine-0", "decoder") and waits for its READY=1.
 * Returns its pid or -1 (the reason is printed). */
pid_t testd_start(testd_t *d, const char *name);
/* Starts decoder, mm_prep, n_engines engines, tokenizer. 0 or -1. */
int testd_start_all(testd_t *d, int n_engines);
void testd_kill(testd_t *d, const char *name, int sig); /* and reaps it */
bool testd_alive(testd_t *d, const char *name);
void testd_signal(testd_t *d, const char *name, int sig);   /* e.g. SIGSTOP/SIGCONT; no reaping */
void testd_stop_all(testd_t *d);                        /* SIGTERM, wait, SIGKILL */
void testd_cleanup(testd_t *d);                         /* stop all, remove the temp dir */
/* Collects notify messages from pid for ms milliseconds; counts lines equal to each of want[n]. */
void testd_notify_count(testd_t *d, pid_t pid, unsigned ms, const char *const *want, size_t n, int *ret_counts);

#endif

/* om_daemon.h: the daemon shell shared by the four main.c files: signals through a signalfd that sits
 * in the zmq_poll set, sd_notify READY/STATUS/STOPPING/WATCHDOG (libsystemd; no-ops without
 * NOTIFY_SOCKET), and the stopping flag for a graceful drain.
 *
 * Use: om_daemon_new() blocks SIGTERM/SIGINT/SIGHUP/SIGPIPE-as-ignored and opens the signalfd; put
 * om_daemon_fd() into zmq_pollitem_t.fd; when it is readable call om_daemon_on_signal(). Call
 * om_daemon_tick() every loop turn: it pings the watchdog at half of WATCHDOG_USEC. The watchdog is
 * only pinged from the main loop, so a stuck loop gets the unit restarted.
 *
 * Ownership: caller-owned; om_daemon_free() sends STOPPING=1 if READY was sent, accepts NULL and
 * returns NULL. One thread. */
#ifndef OM_DAEMON_H
#define OM_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

typedef struct om_daemon om_daemon_t;

int om_daemon_new(const char *name, om_daemon_t **ret);
om_daemon_t *om_daemon_free(om_daemon_t *d);
int om_daemon_fd(const om_daemon_t *d); /* signalfd */
/* Reads pending signals. Returns the last signal number (SIGTERM/SIGINT set the stopping flag,
 * SIGHUP is returned for the caller to reload or ignore), 0 if none. */
int om_daemon_on_signal(om_daemon_t *d);
bool om_daemon_stopping(const om_daemon_t *d);
void om_daemon_request_stop(om_daemon_t *d);
void om_daemon_ready(om_daemon_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void om_daemon_status(om_daemon_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends EXTEND_TIMEOUT_USEC (long loads). */
void om_daemon_extend_timeout(om_daemon_t *d, uint64_t usec);
void om_daemon_tick(om_daemon_t *d, uint64_t now_mono_ms);
/* Poll timeout cap (ms) that keeps the watchdog fed; -1 when there is no watchdog. */
long om_daemon_watchdog_poll_ms(const om_daemon_t *d);

#endif

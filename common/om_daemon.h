/* om_daemon.h: the daemon shell shared by the four main.c files: signals through a signalfd that sits
 * in the zmq_poll set, sd_notify READY/STATUS/STOPPING/WATCHDOG (libsystemd; no-ops without
 * NOTIFY_SOCKET), and the stopping flag for a graceful drain.
 *
 * Use: om_daemon_new() blocks SIGTERM/SIGINT/SIGHUP/SIGPIPE-as-ignored and opens the signalfd; put
 * om_daemon_fd() into zmq_pollitem_t.fd; when it is readable call om_daemon_on_signal(). Call
 * om_daemon_tick() every loop turn: it pings the watchdog at half of WATCHDOG_USEC. The watchdog is
 * only pinged from the main loop, so a stuck loop gets the unit restarted.
 *
 * The rest of a daemon's start-up and loop is shared too: om_daemon_config() (log ident, config,
 * --help, log level), om_daemon_transport() (record dir, hwm, the capture's config entry) and
 * om_daemon_poll() (signalfd + the daemon's sockets, watchdog-capped timeout).
 *
 * Ownership: caller-owned; om_daemon_free() sends STOPPING=1 if READY was sent, accepts NULL and
 * returns NULL. One thread. */
#ifndef OM_DAEMON_H
#define OM_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "om_config.h"
#include "om_transport.h"

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

/* ---- start-up and main-loop steps shared by the four daemons' main.c ---- */

/* Sets the log ident to `stage`, loads the configuration (file section `stage`, environment, flags;
 * keys: the daemon's own table, merged with om_config_common_keys) and applies log_level. --help
 * prints the usage of `prog`. Returns 0 with *ret (caller frees), 1 after --help (*ret NULL: exit
 * 0), or -errno after logging the reason. */
int om_daemon_config(const char *stage, const char *prog, const om_config_key_t *keys, int argc, char **argv,
                     om_config_t **ret);
/* Opens the process's transport for `stage`: records to the `record` key's dir when set, applies the
 * `hwm` key (at most 1000000 messages) and writes kv (n_kv "key=value" strings: what replay needs to
 * rebuild the stage's service) as the capture's config entry. 0 and *ret, or -errno after logging. */
int om_daemon_transport(const om_config_t *cfg, const char *stage, const char *const *kv, size_t n_kv,
                        om_transport_t **ret);
/* ", recording to PATH" when t records (written in buf), else "": for the ready log line. */
const char *om_daemon_recording_note(const om_transport_t *t, char *buf, size_t len);
/* One poll of a daemon's main loop. items[0] is set here to the signalfd; the caller's sockets are
 * items[1..n). timeout_ms (-1 = none) is capped so the watchdog stays fed. A pending signal is read
 * (om_daemon_on_signal). Returns zmq_poll's count (0: timed out or interrupted), or -errno after
 * logging. */
int om_daemon_poll(om_daemon_t *d, zmq_pollitem_t *items, int n, long timeout_ms);

#endif

/* om_daemon.c: signalfd + sd_notify daemon shell; see om_daemon.h. */
#include "om_daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "om_log.h"
#include "om_transport.h"

/* sd_notify(3) sender that never blocks: a supervisor that stops reading its notify socket (full
 * datagram queue) must not stall the daemon's loop, so the message is sent with MSG_DONTWAIT and
 * dropped if it cannot go now. libsystemd's sd_notify() blocks in that case. */
static void s_notify(const char *msg) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return;
    ssize_t r = sendto(fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    (void)r;
    close(fd);
}

#define sd_notify(unset_env, msg) s_notify(msg)

struct om_daemon {
    const char *name;           /* stage name, borrowed */
    int sfd;                    /* signalfd for SIGTERM, SIGINT, SIGHUP */
    bool stopping;              /* SIGTERM/SIGINT seen or stop requested */
    bool ready;                 /* READY=1 sent */
    uint64_t watchdog_ms;       /* WATCHDOG_USEC / 1000, 0 = off */
    uint64_t last_watchdog_ms;  /* monotonic ms of the last WATCHDOG=1 */
};

int om_daemon_new(const char *name, om_daemon_t **ret) {
    om_daemon_t *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->name = name;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
        int r = -errno;
        free(d);
        return r;
    }
    signal(SIGPIPE, SIG_IGN);
    d->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (d->sfd < 0) {
        int r = -errno;
        free(d);
        return r;
    }
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        d->watchdog_ms = usec / 1000;
    *ret = d;
    return 0;
}

om_daemon_t *om_daemon_free(om_daemon_t *d) {
    if (!d)
        return NULL;
    if (d->ready)
        sd_notify(0, "STOPPING=1");
    close(d->sfd);
    free(d);
    return NULL;
}

int om_daemon_fd(const om_daemon_t *d) { return d->sfd; }

int om_daemon_on_signal(om_daemon_t *d) {
    struct signalfd_siginfo si;
    int last = 0;
    while (read(d->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        last = (int)si.ssi_signo;
        if (last == SIGTERM || last == SIGINT) {
            if (!d->stopping)
                om_log_notice("got %s, draining", strsignal(last));
            d->stopping = true;
        }
    }
    if (d->stopping && d->ready)
        sd_notify(0, "STOPPING=1");
    return last;
}

bool om_daemon_stopping(const om_daemon_t *d) { return d->stopping; }
void om_daemon_request_stop(om_daemon_t *d) { d->stopping = true; }

static void s_vnotify(const char *prefix, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char buf[600];
    snprintf(buf, sizeof buf, "%sSTATUS=%s", prefix, msg);
    sd_notify(0, buf);
}

void om_daemon_ready(om_daemon_t *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    s_vnotify("READY=1\n", fmt, ap);
    va_end(ap);
    d->ready = true;
}

void om_daemon_status(om_daemon_t *d, const char *fmt, ...) {
    (void)d;
    va_list ap;
    va_start(ap, fmt);
    s_vnotify("", fmt, ap);
    va_end(ap);
}

void om_daemon_extend_timeout(om_daemon_t *d, uint64_t usec) {
    (void)d;
    char buf[64];
    snprintf(buf, sizeof buf, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
    sd_notify(0, buf);
}

void om_daemon_tick(om_daemon_t *d, uint64_t now_mono_ms) {
    if (!d->watchdog_ms)
        return;
    if (now_mono_ms - d->last_watchdog_ms >= d->watchdog_ms / 2) {
        sd_notify(0, "WATCHDOG=1");
        d->last_watchdog_ms = now_mono_ms;
    }
}

long om_daemon_watchdog_poll_ms(const om_daemon_t *d) {
    return d->watchdog_ms ? (long)(d->watchdog_ms / 4 + 1) : -1;
}

/* ---- the start-up and main-loop steps every daemon's main.c shares ---- */

int om_daemon_config(const char *stage, const char *prog, const om_config_key_t *keys, int argc, char **argv,
                     om_config_t **ret) {
    char err[512];
    om_config_t *cfg = NULL;
    om_log_set_ident(stage);
    int r = om_config_load_section(stage, keys, argc, argv, &cfg, err, sizeof err);
    if (r < 0)
        return om_log_errno(r, "%s", err);
    if (om_config_get_bool(cfg, "help")) {
        om_config_usage(cfg, prog);
        om_config_free(cfg);
        *ret = NULL;
        return 1;
    }
    int lvl = om_log_parse_level(om_config_get(cfg, "log_level"));
    if (lvl >= 0)
        om_log_max_level = lvl;
    *ret = cfg;
    return 0;
}

int om_daemon_transport(const om_config_t *cfg, const char *stage, const char *const *kv, size_t n_kv,
                        om_transport_t **ret) {
    char err[512];
    uint64_t hwm = 0;
    int r = om_config_get_u64(cfg, "hwm", &hwm, err, sizeof err);
    if (r < 0 || hwm > 1000000) {
        om_log_err("%s", r < 0 ? err : "hwm: at most 1000000 messages");
        return -EINVAL;
    }
    om_transport_t *t = NULL;
    if ((r = om_transport_new(stage, om_config_get(cfg, "record"), &t, err, sizeof err)) < 0) {
        om_log_err("%s", err);
        return r;
    }
    om_transport_set_hwm(t, (int)hwm);
    om_transport_record_config(t, kv, n_kv);
    *ret = t;
    return 0;
}

const char *om_daemon_recording_note(const om_transport_t *t, char *buf, size_t len) {
    const char *path = om_transport_capture_path(t);
    if (!path)
        return "";
    snprintf(buf, len, ", recording to %s", path);
    return buf;
}

int om_daemon_poll(om_daemon_t *d, zmq_pollitem_t *items, int n, long timeout_ms) {
    items[0] = (zmq_pollitem_t){NULL, d->sfd, ZMQ_POLLIN, 0};
    long wd = om_daemon_watchdog_poll_ms(d);
    if (wd > 0 && (timeout_ms < 0 || wd < timeout_ms))
        timeout_ms = wd;
    int r = zmq_poll(items, n, timeout_ms);
    if (r < 0) {
        if (errno == EINTR)
            return 0;
        return om_log_errno(-errno, "zmq_poll: %s", zmq_strerror(errno));
    }
    if (items[0].revents & ZMQ_POLLIN)
        om_daemon_on_signal(d);
    return r;
}

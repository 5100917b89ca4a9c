/* om_log.h: one-line log records on stderr with journald priority prefixes ("<3>msg").
 *
 * Library and _core code stays silent above debug; daemons and the CLI log once, at the boundary.
 * om_log() tests the level before evaluating its arguments. om_log_errno() logs and returns the
 * (negative) errno it was given, so `return om_log_errno(r, "...: %s", strerror(-r));` works.
 * Thread-safe: each record is one write(2). The only mutable global is the level. */
#ifndef OM_LOG_H
#define OM_LOG_H

#include <stdarg.h>

enum om_log_level {
    OM_LOG_EMERG = 0, OM_LOG_ALERT, OM_LOG_CRIT, OM_LOG_ERR,
    OM_LOG_WARNING, OM_LOG_NOTICE, OM_LOG_INFO, OM_LOG_DEBUG,
};

extern int om_log_max_level; /* records above this level are dropped; default OM_LOG_INFO */

void om_log_set_ident(const char *ident); /* prefix after the priority, e.g. "tok"; borrowed */
int om_log_parse_level(const char *s);    /* "err", "info", "debug" or a digit; -EINVAL if unknown */
void om_log_internal(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define om_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= om_log_max_level)                                                           \
            om_log_internal((level), __VA_ARGS__);                                                 \
    } while (0)

#define om_log_err(...) om_log(OM_LOG_ERR, __VA_ARGS__)
#define om_log_warning(...) om_log(OM_LOG_WARNING, __VA_ARGS__)
#define om_log_notice(...) om_log(OM_LOG_NOTICE, __VA_ARGS__)
#define om_log_info(...) om_log(OM_LOG_INFO, __VA_ARGS__)
#define om_log_debug(...) om_log(OM_LOG_DEBUG, __VA_ARGS__)

/* Logs at err and returns r (a negative errno). */
#define om_log_errno(r, ...)                                                                       \
    ((OM_LOG_ERR <= om_log_max_level ? om_log_internal(OM_LOG_ERR, __VA_ARGS__) : (void)0), (r))

#endif

/* om_log.c: stderr logging with journald "<N>" priority prefixes. See om_log.h. */
#include "om_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int om_log_max_level = OM_LOG_INFO;
static const char *s_ident = "omnipipe";

void om_log_set_ident(const char *ident) {
    if (ident)
        s_ident = ident;
}

int om_log_parse_level(const char *s) {
    static const char *names[] = {"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"};
    if (!s)
        return -EINVAL;
    if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
        return s[0] - '0';
    for (int i = 0; i < 8; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    if (strcmp(s, "error") == 0)
        return OM_LOG_ERR;
    if (strcmp(s, "warn") == 0)
        return OM_LOG_WARNING;
    return -EINVAL;
}

void om_log_internal(int level, const char *fmt, ...) {
    char buf[2048];
    int saved = errno;
    int n = snprintf(buf, sizeof buf, "<%d>%s: ", level < 0 ? 0 : level > 7 ? 7 : level, s_ident);
    if (n < 0)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    /* one record per line: fold embedded newlines */
    for (size_t i = (size_t)n; i < len; i++)
        if (buf[i] == '\n')
            buf[i] = ' ';
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
    errno = saved;
}

/* testd.c: the daemon test harness; see testd.h. */
#include "testd.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long long s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

int testd_init(testd_t *d, const char *tag, const char *model) {
    memset(d, 0, sizeof *d);
    snprintf(d->rt, sizeof d->rt, "/tmp/omt-%s-XXXXXX", tag);
    if (!mkdtemp(d->rt))
        return -1;
    const char *bin = getenv("OM_BIN_DIR");
    snprintf(d->bindir, sizeof d->bindir, "%s", bin ? bin : OM_BINARY_DIR "/bin");
    const char *shared = getenv("OM_SHARED_DIR");
    if (model)
        snprintf(d->model, sizeof d->model, "%s", model);
    else
        snprintf(d->model, sizeof d->model, "%s/fixtures/tiny-omni", shared ? shared : OM_SHARED_DIR);
    d->heartbeat_ms = 100;
    d->nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    snprintf(d->notify, sizeof d->notify, "@omt-%d-%llx", (int)getpid(), s_now_ms());
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path + 1, d->notify + 1, strlen(d->notify) - 1);
    int one = 1;
    if (d->nfd < 0 || setsockopt(d->nfd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0 ||
        bind(d->nfd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(d->notify))) < 0)
        return -1;
    return 0;
}

static int s_find(testd_t *d, const char *name) {
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->name[i], name) == 0)
            return (int)i;
    return -1;
}

pid_t testd_start(testd_t *d, const char *name) {
    int i = s_find(d, name);
    if (i < 0) {
        if (d->n == TESTD_MAX)
            return -1;
        i = (int)d->n++;
        snprintf(d->name[i], sizeof d->name[i], "%s", name);
    }
    char bin[1200], hb[16];
    const char *exe = strncmp(name, "engine", 6) == 0 ? "engine_svc"
                      : strcmp(name, "mm_prep") == 0  ? "mm_prep_svc"
                      : strcmp(name, "decoder") == 0  ? "decoder_svc"
                                                      : "tokenizer_svc";
    snprintf(bin, sizeof bin, "%s/%s", d->bindir, exe);
    snprintf(hb, sizeof hb, "%u", d->heartbeat_ms);
    char *args[24];
    int n = 0;
    args[n++] = bin;
    args[n++] = "--runtime-dir";
    args[n++] = d->rt;
    args[n++] = "--heartbeat-ms";
    args[n++] = hb;
    if (strcmp(name, "mm_prep") != 0) {
        args[n++] = "--model";
        args[n++] = d->model;
    }
    if (strncmp(name, "engine", 6) == 0) {
        args[n++] = "--engine-id";
        args[n++] = (char *)name;
        args[n++] = "--backend";
        args[n++] = "cpu";
        args[n++] = "--threads";
        args[n++] = "1";
        args[n++] = "--drain-ms";
        args[n++] = "1000";
    }
    if (strcmp(name, "tokenizer") == 0) {
        args[n++] = "--threads";
        args[n++] = "2";
    }
    if (d->record[0]) {
        args[n++] = "--record";
        args[n++] = d->record;
    }
    args[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setenv("NOTIFY_SOCKET", d->notify, 1);
        if (d->watchdog_usec) {
            char wd[32];
            snprintf(wd, sizeof wd, "%u", d->watchdog_usec);
            setenv("WATCHDOG_USEC", wd, 1);
        }
        execv(bin, args);
        fprintf(stderr, "testd: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    d->pid[i] = pid;
    unsigned long long end = s_now_ms() + 60000;
    while (s_now_ms() < end) {
        struct pollfd p = {d->nfd, POLLIN, 0};
        poll(&p, 1, 100);
        char buf[2048];
        char cbuf[CMSG_SPACE(sizeof(struct ucred))];
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        ssize_t r;
        while ((r = recvmsg(d->nfd, &mh, MSG_DONTWAIT)) >= 0) {
            buf[r] = '\0';
            pid_t from = 0;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
                    struct ucred uc;
                    memcpy(&uc, CMSG_DATA(cm), sizeof uc);
                    from = uc.pid;
                }
            if (from == pid && strstr(buf, "READY=1"))
                return pid;
            mh.msg_controllen = sizeof cbuf;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "testd: %s exited before READY (status 0x%x)\n", name, st);
            d->pid[i] = 0;
            return -1;
        }
    }
    fprintf(stderr, "testd: %s not ready after 60 s\n", name);
    return -1;
}

int testd_start_all(testd_t *d, int n_engines) {
    if (testd_start(d, "decoder") < 0 || testd_start(d, "mm_prep") < 0)
        return -1;
    for (int e = 0; e < n_engines; e++) {
        char name[32];
        snprintf(name, sizeof name, "engine-%d", e);
        if (testd_start(d, name) < 0)
            return -1;
    }
    return testd_start(d, "tokenizer") < 0 ? -1 : 0;
}

void testd_kill(testd_t *d, const char *name, int sig) {
    int i = s_find(d, name);
    if (i < 0 || !d->pid[i])
        return;
    kill(d->pid[i], sig);
    waitpid(d->pid[i], NULL, 0);
    d->pid[i] = 0;
}

void testd_signal(testd_t *d, const char *name, int sig) {
    int i = s_find(d, name);
    if (i >= 0 && d->pid[i])
        kill(d->pid[i], sig);
}

bool testd_alive(testd_t *d, const char *name) {
    int i = s_find(d, name);
    if (i < 0 || !d->pid[i])
        return false;
    int st;
    if (waitpid(d->pid[i], &st, WNOHANG) == d->pid[i]) {
        d->pid[i] = 0;
        return false;
    }
    return true;
}

void testd_stop_all(testd_t *d) {
    for (size_t i = 0; i < d->n; i++)
        if (d->pid[i]) {
            kill(d->pid[i], SIGTERM);
            kill(d->pid[i], SIGCONT); /* a stopped daemon must run to see SIGTERM */
        }
    unsigned long long end = s_now_ms() + 15000;
    for (size_t i = 0; i < d->n; i++) {
        while (d->pid[i] && s_now_ms() < end) {
            if (waitpid(d->pid[i], NULL, WNOHANG) == d->pid[i])
                d->pid[i] = 0;
            else
                usleep(10000);
        }
        if (d->pid[i]) {
            fprintf(stderr, "testd: %s ignored SIGTERM for 15 s, killing it\n", d->name[i]);
            kill(d->pid[i], SIGKILL);
            waitpid(d->pid[i], NULL, 0);
            d->pid[i] = 0;
        }
    }
}

void testd_cleanup(testd_t *d) {
    testd_stop_all(d);
    if (d->nfd > 0)
        close(d->nfd);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->rt);
    if (system(cmd) != 0)
        fprintf(stderr, "testd: cannot remove %s\n", d->rt);
}

void testd_notify_count(testd_t *d, pid_t pid, unsigned ms, const char *const *want, size_t n, int *ret_counts) {
    for (size_t k = 0; k < n; k++)
        ret_counts[k] = 0;
    unsigned long long end = s_now_ms() + ms;
    while (s_now_ms() < end) {
        struct pollfd p = {d->nfd, POLLIN, 0};
        poll(&p, 1, 20);
        char buf[2048];
        char cbuf[CMSG_SPACE(sizeof(struct ucred))];
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        ssize_t r;
        while ((r = recvmsg(d->nfd, &mh, MSG_DONTWAIT)) >= 0) {
            buf[r] = '\0';
            pid_t from = 0;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
                    struct ucred uc;
                    memcpy(&uc, CMSG_DATA(cm), sizeof uc);
                    from = uc.pid;
                }
            mh.msg_controllen = sizeof cbuf;
            if (from != pid)
                continue;
            for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
                for (size_t k = 0; k < n; k++)
                    ret_counts[k] += strcmp(line, want[k]) == 0;
        }
    }
}

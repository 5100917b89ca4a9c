/* cmd_up.c: `omnipipe up` starts the four daemons (decoder, mm_prep, N engines, tokenizer; the
 * binaries next to omnipipe), waits until each has sent READY=1 through the real sd_notify protocol
 * (a private AF_UNIX datagram socket passed as NOTIFY_SOCKET; the sender is identified by its
 * SCM_CREDENTIALS pid), prints a line containing `ready`, then supervises. With --restart no (the
 * default) a daemon that dies is named and the others are stopped. With --restart on-failure (what the
 * systemd units' Restart=on-failure does) a daemon that is killed by a signal or exits non-zero is
 * started again with the same arguments after a backoff: --restart-delay-ms (default 1000), doubled for
 * every failure in a row (a run that stayed ready 10 s resets the count), at most 30 s; after
 * UP_MAX_FAILS failures in a row it gives up and stops the others. Stdout gets one line per restart,
 * "omnipipe: restarted NAME (pid P)", and one when it has sent READY=1 again, "omnipipe: ready again:
 * NAME (pid P)". A daemon that exits 0 on its own is not restarted (as on-failure). On SIGINT/SIGTERM
 * it stops them all (SIGTERM, then SIGKILL after 15 s). */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "eng_devices.h"
#include "om_config.h"
#include "om_time.h"

#define UP_MAX_CHILDREN 40
#define UP_MAX_ARGS 40
#define UP_MAX_FAILS 5           /* failures in a row before --restart on-failure gives up */
#define UP_STABLE_MS 10000       /* a run ready this long resets the failure count */
#define UP_MAX_DELAY_MS 30000    /* longest restart backoff */

typedef struct up_child {
    char name[32];            /* "tokenizer", "engine-0", ... */
    pid_t pid;                /* 0 once reaped */
    pid_t started;            /* the pid it was last started with */
    bool ready;               /* READY=1 received from the current run */
    bool died;                /* reaped, not yet handled by the supervisor */
    int status;               /* wait status once reaped */
    uint64_t ready_ms;        /* monotonic ms of the current run's READY=1 */
    uint64_t restart_at_ms;   /* monotonic ms to start it again; 0 = no restart pending */
    unsigned fails;           /* failures in a row (reset by a stable run) */
    unsigned restarts;        /* restarts so far */
    char bin[4200];           /* executable path */
    char eid[32];             /* engines: --engine-id, --devices, --tensor-parallel values */
    char dev[ENG_DEVICES_MAX * 6], tpv[8]; /* (argv points here) */
    char *argv[UP_MAX_ARGS];  /* NULL-terminated; strings live here or in cmd_up's frame */
} up_child_t;

typedef struct up_state {
    up_child_t c[UP_MAX_CHILDREN];
    size_t n;
    int nfd;        /* notify socket */
    int sfd;        /* signalfd */
    sigset_t oldmask;
} up_state_t;

/* starts (or starts again) child c with its recorded bin and argv */
static int s_spawn(up_state_t *u, up_child_t *c, const char *notify) {
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &u->oldmask, NULL);
        setenv("NOTIFY_SOCKET", notify, 1);
        execv(c->bin, c->argv);
        fprintf(stderr, "omnipipe up: cannot run '%s': %s\n", c->bin, strerror(errno));
        _exit(127);
    }
    c->pid = c->started = pid;
    c->ready = false;
    c->died = false;
    return 0;
}

static void s_describe(const up_child_t *c, char *buf, size_t len) {
    if (WIFEXITED(c->status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(c->status));
    else if (WIFSIGNALED(c->status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(c->status), strsignal(WTERMSIG(c->status)));
    else
        snprintf(buf, len, "stopped");
}

/* reaps children; returns the index of one that died unexpectedly, -1 if none */
static int s_reap(up_state_t *u) {
    int dead = -1;
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0)
            break;
        for (size_t i = 0; i < u->n; i++)
            if (u->c[i].pid == p) {
                u->c[i].pid = 0;
                u->c[i].status = st;
                u->c[i].died = true;
                if (dead < 0)
                    dead = (int)i;
            }
    }
    return dead;
}

static void s_read_notify(up_state_t *u, bool verbose, bool announce) {
    for (;;) {
        char buf[4096];
        char cbuf[CMSG_SPACE(sizeof(struct ucred))];
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(u->nfd, &mh, MSG_DONTWAIT);
        if (n < 0)
            return;
        buf[n] = '\0';
        pid_t pid = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
                struct ucred uc;
                memcpy(&uc, CMSG_DATA(cm), sizeof uc);
                pid = uc.pid;
            }
        for (size_t i = 0; i < u->n; i++) {
            if (u->c[i].pid != pid || pid == 0)
                continue;
            for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
                if (strcmp(line, "READY=1") == 0 && !u->c[i].ready) {
                    u->c[i].ready = true;
                    u->c[i].ready_ms = om_time_mono_ms();
                    if (announce && u->c[i].restarts) {
                        printf("omnipipe: ready again: %s (pid %d)\n", u->c[i].name, (int)pid);
                        fflush(stdout);
                    }
                }
                else if (verbose && strncmp(line, "STATUS=", 7) == 0 && !u->c[i].ready)
                    fprintf(stderr, "omnipipe up: %s: %s\n", u->c[i].name, line + 7);
            }
        }
    }
}

static void s_stop_all(up_state_t *u) {
    for (size_t i = 0; i < u->n; i++)
        if (u->c[i].pid)
            kill(u->c[i].pid, SIGTERM);
    uint64_t end = om_time_mono_ms() + 15000;
    for (;;) {
        s_reap(u);
        bool any = false;
        for (size_t i = 0; i < u->n; i++)
            any |= u->c[i].pid != 0;
        if (!any)
            return;
        if (om_time_mono_ms() > end) {
            for (size_t i = 0; i < u->n; i++)
                if (u->c[i].pid) {
                    fprintf(stderr, "omnipipe up: %s did not stop within 15 s, killing it\n", u->c[i].name);
                    kill(u->c[i].pid, SIGKILL);
                }
            end = om_time_mono_ms() + 5000;
        }
        struct pollfd p = {u->sfd, POLLIN, 0};
        poll(&p, 1, 50);
        struct signalfd_siginfo si;
        while (read(u->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        }
    }
}

static void s_usage(void) {
    printf("usage: omnipipe up --model DIR [--runtime-dir D] [--engines N] [--backend cpu|cuda]\n"
           "                   [--devices LIST] [--tensor-parallel N]\n"
           "                   [--record DIR] [--threads N] [--load-format auto|dummy]\n"
           "                   [--heartbeat-ms N] [--log-level L] [--ready-timeout S]\n"
           "                   [--restart no|on-failure] [--restart-delay-ms N]\n");
}

int cmd_up(int argc, char **argv) {
    enum {
        O_MODEL = 1000, O_RT, O_ENGINES, O_BACKEND, O_RECORD, O_THREADS, O_LF, O_HB, O_LOG, O_TIMEOUT, O_RESTART,
        O_RDELAY, O_DEVICES, O_TP, O_HELP
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, O_MODEL},     {"runtime-dir", required_argument, NULL, O_RT},
        {"engines", required_argument, NULL, O_ENGINES}, {"backend", required_argument, NULL, O_BACKEND},
        {"record", required_argument, NULL, O_RECORD},   {"threads", required_argument, NULL, O_THREADS},
        {"load-format", required_argument, NULL, O_LF},  {"heartbeat-ms", required_argument, NULL, O_HB},
        {"log-level", required_argument, NULL, O_LOG},   {"ready-timeout", required_argument, NULL, O_TIMEOUT},
        {"restart", required_argument, NULL, O_RESTART}, {"restart-delay-ms", required_argument, NULL, O_RDELAY},
        {"devices", required_argument, NULL, O_DEVICES}, {"tensor-parallel", required_argument, NULL, O_TP},
        {"help", no_argument, NULL, O_HELP},             {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *rt = NULL, *backend = "cpu", *record = NULL, *threads = NULL, *lf = NULL;
    const char *hb = NULL, *loglevel = NULL;
    long engines = 1, timeout_s = 300, restart_delay_ms = 1000, tp = 1;
    bool restart = false, engines_set = false;
    const char *devices = NULL;
    char *num_end = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case O_MODEL: model = optarg; break;
        case O_RT: rt = optarg; break;
        case O_ENGINES: engines = strtol(optarg, NULL, 10); engines_set = true; break;
        case O_DEVICES: devices = optarg; break;
        case O_TP:
            errno = 0;
            tp = strtol(optarg, &num_end, 10);
            if (num_end == optarg || *num_end || errno || tp < 1 || tp > ENG_DEVICES_MAX) {
                fprintf(stderr, "omnipipe up: --tensor-parallel: expected 1..%d, got '%s'\n", ENG_DEVICES_MAX,
                        optarg);
                return 2;
            }
            break;
        case O_BACKEND: backend = optarg; break;
        case O_RECORD: record = optarg; break;
        case O_THREADS: threads = optarg; break;
        case O_LF: lf = optarg; break;
        case O_HB: hb = optarg; break;
        case O_LOG: loglevel = optarg; break;
        case O_TIMEOUT: timeout_s = strtol(optarg, NULL, 10); break;
        case O_RESTART:
            if (strcmp(optarg, "no") != 0 && strcmp(optarg, "on-failure") != 0) {
                fprintf(stderr, "omnipipe up: --restart: expected 'no' or 'on-failure', got '%s'\n", optarg);
                return 2;
            }
            restart = strcmp(optarg, "on-failure") == 0;
            break;
        case O_RDELAY:
            errno = 0;
            restart_delay_ms = strtol(optarg, &num_end, 10);
            if (num_end == optarg || *num_end || errno || restart_delay_ms < 0 || restart_delay_ms > UP_MAX_DELAY_MS) {
                fprintf(stderr, "omnipipe up: --restart-delay-ms: expected 0..%d, got '%s'\n", UP_MAX_DELAY_MS,
                        optarg);
                return 2;
            }
            break;
        case O_HELP: s_usage(); return 0;
        default: s_usage(); return 2;
        }
    }
    if (!model || optind < argc) {
        fprintf(stderr, "omnipipe up: --model DIR is required\n");
        s_usage();
        return 2;
    }
    /* GPU placement: engine e on list[e·tp .. e·tp+tp-1] (eng_devices.h); without --engines, as
       many engines as the list holds groups of tp */
    int devlist[ENG_DEVICES_MAX], n_devlist = 0;
    char derr[512];
    if (devices && eng_devices_parse(devices, "--devices", devlist, ENG_DEVICES_MAX, &n_devlist, derr,
                                     sizeof derr) < 0) {
        fprintf(stderr, "omnipipe up: %s\n", derr);
        return 2;
    }
    if (devices && !engines_set)
        engines = n_devlist / tp > 0 ? n_devlist / tp : 1;
    if (engines < 1 || engines > UP_MAX_CHILDREN - 3 || timeout_s < 1) {
        fprintf(stderr, "omnipipe up: --engines must be 1..%d and --ready-timeout positive\n", UP_MAX_CHILDREN - 3);
        return 2;
    }
    for (long e = 0; e < engines; e++) {
        int d[ENG_DEVICES_MAX];
        if (eng_devices_place(devices ? devlist : NULL, n_devlist, (int)engines, (int)tp, (int)e, d, derr,
                              sizeof derr) < 0) {
            fprintf(stderr, "omnipipe up: %s\n", derr);
            return 2;
        }
    }
    if ((devices || tp > 1) && strcmp(backend, "cuda") != 0) {
        fprintf(stderr, "omnipipe up: --devices and --tensor-parallel need --backend cuda\n");
        return 2;
    }
    char bindir[4096], rtdir[4096];
    if (cli_bindir(bindir, sizeof bindir) < 0) {
        fprintf(stderr, "omnipipe up: cannot find the directory of the omnipipe binary\n");
        return 1;
    }
    int r = rt ? (snprintf(rtdir, sizeof rtdir, "%s", rt), 0) : om_config_default_runtime_dir(rtdir, sizeof rtdir);
    if (r == 0 && rt) {
        char probe[4200];
        r = om_config_endpoint_in(rtdir, "decoder_in", probe, sizeof probe);
    }
    if (r < 0) {
        fprintf(stderr, "omnipipe up: runtime dir '%s': %s\n", rt ? rt : "(default)", strerror(-r));
        return 1;
    }
    mkdir(rtdir, 0750);

    up_state_t u = {0};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &u.oldmask);
    u.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    u.nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char notify[108];
    snprintf(notify, sizeof notify, "@omnipipe-up-%d-%llx", (int)getpid(),
             (unsigned long long)(om_time_mono_ns() & 0xffffffull));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path + 1, notify + 1, strlen(notify) - 1); /* abstract namespace */
    int one = 1;
    if (u.sfd < 0 || u.nfd < 0 || setsockopt(u.nfd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0 ||
        bind(u.nfd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(notify))) < 0) {
        fprintf(stderr, "omnipipe up: cannot create the notify socket: %s\n", strerror(errno));
        return 1;
    }

    /* common arguments */
    char *common[16];
    int nc = 0;
    common[nc++] = "--runtime-dir";
    common[nc++] = rtdir;
    if (record) {
        common[nc++] = "--record";
        common[nc++] = (char *)record;
    }
    if (hb) {
        common[nc++] = "--heartbeat-ms";
        common[nc++] = (char *)hb;
    }
    if (loglevel) {
        common[nc++] = "--log-level";
        common[nc++] = (char *)loglevel;
    }
    struct { const char *name, *bin; } order[] = {
        {"decoder", "decoder_svc"}, {"mm_prep", "mm_prep_svc"}, {"engine", "engine_svc"}, {"tokenizer", "tokenizer_svc"},
    };
    int rc = 0;
    for (size_t k = 0; k < 4 && rc == 0; k++) {
        long count = strcmp(order[k].name, "engine") == 0 ? engines : 1;
        for (long e = 0; e < count && rc == 0; e++) {
            if (u.n == UP_MAX_CHILDREN) {
                fprintf(stderr, "omnipipe up: too many daemons\n");
                rc = 1;
                break;
            }
            up_child_t *ch = &u.c[u.n];
            memset(ch, 0, sizeof *ch);
            char *bin = ch->bin, *name = ch->name, *eid = ch->eid, *dev = ch->dev, *tpv = ch->tpv;
            snprintf(bin, sizeof ch->bin, "%s/%s", bindir, order[k].bin);
            char **args = ch->argv;
            int na = 0;
            args[na++] = bin;
            for (int i = 0; i < nc; i++)
                args[na++] = common[i];
            if (strcmp(order[k].name, "mm_prep") != 0) {
                args[na++] = "--model";
                args[na++] = (char *)model;
            }
            snprintf(name, sizeof ch->name, "%s", order[k].name);
            if (strcmp(order[k].name, "engine") == 0) {
                snprintf(name, sizeof ch->name, "engine-%ld", e);
                snprintf(eid, sizeof ch->eid, "engine-%ld", e);
                args[na++] = "--engine-id";
                args[na++] = eid;
                args[na++] = "--backend";
                args[na++] = (char *)backend;
                if (strcmp(backend, "cuda") == 0) { /* checked above */
                    int d[ENG_DEVICES_MAX];
                    eng_devices_place(devices ? devlist : NULL, n_devlist, (int)engines, (int)tp, (int)e, d,
                                      NULL, 0);
                    eng_devices_format(d, (int)tp, dev, sizeof ch->dev);
                    snprintf(tpv, sizeof ch->tpv, "%ld", tp);
                    args[na++] = "--devices";
                    args[na++] = dev;
                    args[na++] = "--tensor-parallel";
                    args[na++] = tpv;
                }
                if (threads) {
                    args[na++] = "--threads";
                    args[na++] = (char *)threads;
                }
                if (lf) {
                    args[na++] = "--load-format";
                    args[na++] = (char *)lf;
                }
            }
            args[na] = NULL;
            if (access(bin, X_OK) < 0) {
                fprintf(stderr, "omnipipe up: '%s' is missing (build it first)\n", bin);
                rc = 1;
            } else if ((r = s_spawn(&u, ch, notify)) < 0) {
                fprintf(stderr, "omnipipe up: cannot start %s: %s\n", name, strerror(-r));
                rc = 1;
            } else {
                u.n++;
            }
        }
    }
    /* wait for READY from every child */
    uint64_t end = om_time_mono_ms() + (uint64_t)timeout_s * 1000;
    bool stop = false;
    while (rc == 0) {
        size_t n_ready = 0;
        for (size_t i = 0; i < u.n; i++)
            n_ready += u.c[i].ready;
        if (n_ready == u.n)
            break;
        if (om_time_mono_ms() > end) {
            fprintf(stderr, "omnipipe up: not ready after %ld s:", timeout_s);
            for (size_t i = 0; i < u.n; i++)
                if (!u.c[i].ready)
                    fprintf(stderr, " %s", u.c[i].name);
            fprintf(stderr, "\n");
            rc = 1;
            break;
        }
        struct pollfd p[2] = {{u.sfd, POLLIN, 0}, {u.nfd, POLLIN, 0}};
        poll(p, 2, 200);
        s_read_notify(&u, true, false);
        struct signalfd_siginfo si;
        while (read(u.sfd, &si, sizeof si) == (ssize_t)sizeof si)
            if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM)
                stop = true;
        int dead = s_reap(&u);
        if (dead >= 0) {
            char why[128];
            s_describe(&u.c[dead], why, sizeof why);
            fprintf(stderr, "omnipipe up: %s %s before it was ready\n", u.c[dead].name, why);
            rc = 1;
        }
        if (stop)
            break;
    }
    if (rc == 0 && !stop) {
        printf("omnipipe: ready: decoder, mm_prep, %ld engine%s (%s), tokenizer on %s (pids", engines,
               engines > 1 ? "s" : "", backend, rtdir);
        for (size_t i = 0; i < u.n; i++)
            printf(" %s=%d", u.c[i].name, (int)u.c[i].pid);
        printf(")\n");
        fflush(stdout);
        while (!stop && rc == 0) {
            uint64_t now = om_time_mono_ms();
            long wait_ms = 1000;
            for (size_t i = 0; i < u.n; i++)
                if (u.c[i].restart_at_ms)
                    wait_ms = u.c[i].restart_at_ms <= now ? 0
                              : (long)(u.c[i].restart_at_ms - now) < wait_ms ? (long)(u.c[i].restart_at_ms - now)
                                                                              : wait_ms;
            struct pollfd p[2] = {{u.sfd, POLLIN, 0}, {u.nfd, POLLIN, 0}};
            poll(p, 2, (int)wait_ms);
            s_read_notify(&u, false, true);
            struct signalfd_siginfo si;
            while (read(u.sfd, &si, sizeof si) == (ssize_t)sizeof si)
                if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM)
                    stop = true;
            if (stop)
                break;
            s_reap(&u);
            now = om_time_mono_ms();
            for (size_t i = 0; i < u.n && rc == 0; i++) {
                up_child_t *ch = &u.c[i];
                if (ch->died) {
                    ch->died = false;
                    char why[128];
                    s_describe(ch, why, sizeof why);
                    bool failed = WIFSIGNALED(ch->status) || (WIFEXITED(ch->status) && WEXITSTATUS(ch->status));
                    if (!restart || !failed) {
                        fprintf(stderr, "omnipipe up: %s (pid %d) %s; stopping the others\n", ch->name,
                                (int)ch->started, why);
                        rc = 1;
                        break;
                    }
                    if (ch->ready && now - ch->ready_ms >= UP_STABLE_MS)
                        ch->fails = 0;
                    ch->ready = false;
                    if (++ch->fails > UP_MAX_FAILS) {
                        fprintf(stderr, "omnipipe up: %s (pid %d) %s; %d failures in a row, giving up and "
                                        "stopping the others\n", ch->name, (int)ch->started, why, UP_MAX_FAILS);
                        rc = 1;
                        break;
                    }
                    uint64_t delay = (uint64_t)restart_delay_ms << (ch->fails - 1);
                    if (delay > UP_MAX_DELAY_MS)
                        delay = UP_MAX_DELAY_MS;
                    ch->restart_at_ms = now + delay;
                    fprintf(stderr, "omnipipe up: %s (pid %d) %s; restarting it in %.1f s (failure %u in a row)\n",
                            ch->name, (int)ch->started, why, (double)delay / 1000.0, ch->fails);
                }
                if (ch->restart_at_ms && now >= ch->restart_at_ms) {
                    ch->restart_at_ms = 0;
                    int sr = s_spawn(&u, ch, notify);
                    if (sr < 0) {
                        fprintf(stderr, "omnipipe up: cannot restart %s: %s; stopping the others\n", ch->name,
                                strerror(-sr));
                        rc = 1;
                        break;
                    }
                    ch->restarts++;
                    printf("omnipipe: restarted %s (pid %d)\n", ch->name, (int)ch->pid);
                    fflush(stdout);
                }
            }
        }
    }
    fprintf(stderr, "omnipipe up: stopping\n");
    s_stop_all(&u);
    close(u.nfd);
    close(u.sfd);
    sigprocmask(SIG_SETMASK, &u.oldmask, NULL);
    return rc;
}

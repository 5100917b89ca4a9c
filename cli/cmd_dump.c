/* cmd_dump.c: `omnipipe dump FILE...` prints capture files as text: the header, then one block per
 * RecordEntry (seq, direction, socket, times) with each frame decoded as an Envelope when it is one
 * (routing identities and other frames as bytes). A corrupted or truncated file ends with an error
 * and exit status 1. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "om_arena.h"
#include "om_capture.h"
#include "om_msg.h"
#include "om_pbtext.h"

static const char *s_dir(int d) {
    return d == OMNIPIPE__RECORD_ENTRY__DIR__IN ? "IN" : d == OMNIPIPE__RECORD_ENTRY__DIR__OUT ? "OUT" : "TICK";
}

static int s_dump(const char *path) {
    char err[512];
    om_capture_reader_t *rd;
    int r = om_capture_reader_new(path, &rd, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "omnipipe dump: %s\n", err);
        return 1;
    }
    printf("# %s: stage %s, proto_version %u\n", path, om_capture_reader_stage(rd),
           om_capture_reader_proto_version(rd));
    om_arena_t *a;
    if (om_arena_new(0, &a) < 0) {
        om_capture_reader_free(rd);
        return 1;
    }
    Omnipipe__RecordEntry *e;
    int rc = 0;
    while ((r = om_capture_reader_next(rd, a, &e, err, sizeof err)) == 1) {
        om_pbtext_t t = {0};
        om_pbtext_printf(&t, "#%" PRIu64 " %s %s t_mono_ns=%" PRIu64 " now_ms=%" PRIu64 " frames=%zu\n",
                         e->seq, s_dir(e->dir), e->socket ? e->socket : "?", e->t_mono_ns, e->now_ms,
                         e->n_frames);
        for (size_t i = 0; i < e->n_frames; i++) {
            Omnipipe__Envelope *env;
            char cerr[160];
            bool is_env = e->dir != OMNIPIPE__RECORD_ENTRY__DIR__TICK &&
                          om_msg_unpack(a, e->frames[i].data, e->frames[i].len, &env) == 0 &&
                          om_msg_check(env, cerr, sizeof cerr) == 0;
            if (is_env) {
                om_pbtext_printf(&t, "  frame[%zu]: Envelope (%s) {\n", i, om_msg_body_name(env));
                om_pbtext_message(&t, &env->base, 4);
                om_pbtext_printf(&t, "  }\n");
            } else {
                om_pbtext_printf(&t, "  frame[%zu]: ", i);
                om_pbtext_printf(&t, "%zu bytes: ", e->frames[i].len);
                for (size_t k = 0; k < e->frames[i].len && k < 64; k++) {
                    uint8_t ch = e->frames[i].data[k];
                    om_pbtext_printf(&t, ch >= 0x20 && ch < 0x7f ? "%c" : "\\x%02x", ch);
                }
                om_pbtext_printf(&t, "\n");
            }
        }
        if (t.buf)
            fputs(t.buf, stdout);
        om_pbtext_done(&t);
        om_arena_reset(a);
    }
    if (r < 0) {
        fprintf(stderr, "omnipipe dump: %s: %s\n", path, err);
        rc = 1;
    }
    om_arena_free(a);
    om_capture_reader_free(rd);
    return rc;
}

int cmd_dump(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: omnipipe dump FILE.omcap...\n");
        return argc < 2 ? 2 : 0;
    }
    int rc = 0;
    for (int i = 1; i < argc; i++)
        rc |= s_dump(argv[i]);
    return rc;
}

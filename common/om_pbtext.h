/* om_pbtext.h: any protobuf-c message as readable, deterministic text (one field per line, nested
 * messages indented), driven by the generated descriptors. Used by `omnipipe dump` and by
 * `omnipipe replay` to show differences line by line. Bytes print as a quoted string when they are
 * printable UTF-8-ish ASCII, else as hex (long values are cut with a byte count).
 *
 * Ownership: writes into a caller-provided growable buffer (om_pbtext_t); om_pbtext_done() frees it.
 * Thread-safe (no state). */
#ifndef OM_PBTEXT_H
#define OM_PBTEXT_H

#include <stddef.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

typedef struct om_pbtext {
    char *buf;  /* NUL-terminated text (malloc'd) */
    size_t len; /* bytes, without the NUL */
    size_t cap; /* allocated bytes */
} om_pbtext_t;

/* Appends msg at the given indent (spaces). Returns 0 or -ENOMEM. */
int om_pbtext_message(om_pbtext_t *t, const ProtobufCMessage *msg, int indent);
int om_pbtext_printf(om_pbtext_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void om_pbtext_done(om_pbtext_t *t);

#endif

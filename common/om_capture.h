/* om_capture.h: capture files (.omcap) written by the transport choke point with --record DIR, read
 * by `omnipipe dump` and `omnipipe replay`.
 *
 * Layout (all integers little endian):
 *   header  32 bytes: magic "OMCAP\r\n\x1a" (8) | u32 format version (1) | u32 proto_version |
 *                     stage name, NUL padded (16)
 *   record  u32 length | RecordEntry (protobuf, `length` bytes) | u32 CRC-32 (IEEE) of those bytes
 * RecordEntry {seq, t_mono_ns, dir IN|OUT|TICK, socket, frames, now_ms} (proto/omnipipe.proto).
 * A writer appends each record with one write(2), so a crash leaves at most one torn record at the end;
 * the reader refuses it (and any checksum mismatch) with a message naming the record and offset.
 *
 * Ownership: writer/reader objects are caller-owned; _free() accepts NULL and returns NULL. Entries
 * returned by om_capture_reader_next() live in the arena passed in. Not thread-safe. */
#ifndef OM_CAPTURE_H
#define OM_CAPTURE_H

#include <stddef.h>
#include <stdint.h>

#include "om_arena.h"
#include "om_proto.h"

#define OM_CAPTURE_MAGIC "OMCAP\r\n\x1a"
#define OM_CAPTURE_FORMAT_VERSION 1u
#define OM_CAPTURE_HEADER_BYTES 32u
#define OM_CAPTURE_MAX_RECORD (256u << 20) /* bytes; a larger length field means corruption */

typedef struct om_capture_writer om_capture_writer_t;
typedef struct om_capture_reader om_capture_reader_t;

/* Creates DIR (mode 0750, parents not created) if needed and DIR/<stage>-<pid>.omcap; writes the
 * header. */
int om_capture_writer_new(const char *dir, const char *stage, long pid, om_capture_writer_t **ret,
                          char *err, size_t errlen);
om_capture_writer_t *om_capture_writer_free(om_capture_writer_t *w);
const char *om_capture_writer_path(const om_capture_writer_t *w); /* borrowed */
/* Appends e; e->seq is overwritten with the writer's running sequence number. */
int om_capture_writer_append(om_capture_writer_t *w, Omnipipe__RecordEntry *e);

/* Opens and validates the header of path. -EBADMSG (bad magic, short header), -EPROTO (format or
 * proto version this build does not read), -errno from open/read; err names the reason. */
int om_capture_reader_new(const char *path, om_capture_reader_t **ret, char *err, size_t errlen);
om_capture_reader_t *om_capture_reader_free(om_capture_reader_t *r);
const char *om_capture_reader_stage(const om_capture_reader_t *r); /* borrowed */
uint32_t om_capture_reader_proto_version(const om_capture_reader_t *r);
/* Reads the next entry into a. Returns 1 and *ret on an entry, 0 at a clean end of file, -EBADMSG
 * for a truncated or corrupted record (err: "record 12 at offset 4096: truncated (needs 300 bytes,
 * 120 left)" / "...: checksum mismatch"). */
int om_capture_reader_next(om_capture_reader_t *r, om_arena_t *a, Omnipipe__RecordEntry **ret,
                           char *err, size_t errlen);

uint32_t om_capture_crc32(const void *data, size_t len);

#endif

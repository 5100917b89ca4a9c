/* om_capture.c: .omcap writer and reader; see om_capture.h for the format. */
#include "om_capture.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct om_capture_writer {
    int fd;          /* O_APPEND file */
    uint64_t seq;    /* next RecordEntry.seq */
    char path[4096]; /* DIR/<stage>-<pid>.omcap */
};

struct om_capture_reader {
    unsigned char *buf; /* whole file */
    size_t len;         /* bytes in buf */
    size_t off;         /* read offset */
    uint64_t n_read;    /* records returned so far */
    uint32_t proto_version;
    char stage[17];
};

uint32_t om_capture_crc32(const void *data, size_t len) {
    static uint32_t table[256];
    static int init;
    if (!init) { /* benign race: every thread computes the same table */
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        init = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void s_put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t s_get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int s_write_all(int fd, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int om_capture_writer_new(const char *dir, const char *stage, long pid, om_capture_writer_t **ret,
                          char *err, size_t errlen) {
    if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
        int r = -errno;
        snprintf(err, errlen, "cannot create capture dir '%s': %s", dir, strerror(-r));
        return r;
    }
    om_capture_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    snprintf(w->path, sizeof w->path, "%s/%s-%ld.omcap", dir, stage, pid);
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640);
    if (w->fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "cannot create capture file '%s': %s", w->path, strerror(-r));
        free(w);
        return r;
    }
    unsigned char hdr[OM_CAPTURE_HEADER_BYTES] = {0};
    memcpy(hdr, OM_CAPTURE_MAGIC, 8);
    s_put32(hdr + 8, OM_CAPTURE_FORMAT_VERSION);
    s_put32(hdr + 12, OM_PROTO_VERSION);
    size_t sl = strlen(stage);
    memcpy(hdr + 16, stage, sl < 16 ? sl : 16);
    int r = s_write_all(w->fd, hdr, sizeof hdr);
    if (r < 0) {
        snprintf(err, errlen, "cannot write capture header to '%s': %s", w->path, strerror(-r));
        close(w->fd);
        free(w);
        return r;
    }
    *ret = w;
    return 0;
}

om_capture_writer_t *om_capture_writer_free(om_capture_writer_t *w) {
    if (!w)
        return NULL;
    close(w->fd);
    free(w);
    return NULL;
}

const char *om_capture_writer_path(const om_capture_writer_t *w) { return w->path; }

int om_capture_writer_append(om_capture_writer_t *w, Omnipipe__RecordEntry *e) {
    e->has_seq = true;
    e->seq = w->seq;
    size_t n = omnipipe__record_entry__get_packed_size(e);
    if (n > OM_CAPTURE_MAX_RECORD)
        return -EMSGSIZE;
    unsigned char stackbuf[8192];
    unsigned char *buf = n + 8 <= sizeof stackbuf ? stackbuf : malloc(n + 8);
    if (!buf)
        return -ENOMEM;
    s_put32(buf, (uint32_t)n);
    omnipipe__record_entry__pack(e, buf + 4);
    s_put32(buf + 4 + n, om_capture_crc32(buf + 4, n));
    int r = s_write_all(w->fd, buf, n + 8);
    if (buf != stackbuf)
        free(buf);
    if (r == 0)
        w->seq++;
    return r;
}

int om_capture_reader_new(const char *path, om_capture_reader_t **ret, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        snprintf(err, errlen, "cannot open capture '%s': %s", path, strerror(-r));
        return r;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        snprintf(err, errlen, "cannot stat capture '%s': %s", path, strerror(-r));
        return r;
    }
    om_capture_reader_t *rd = calloc(1, sizeof *rd);
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    if (!rd || !buf) {
        free(rd);
        free(buf);
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    rd->buf = buf;
    rd->len = got;
    int r = 0;
    if (got < OM_CAPTURE_HEADER_BYTES) {
        snprintf(err, errlen, "capture '%s': truncated header (%zu of %u bytes)", path, got,
                 OM_CAPTURE_HEADER_BYTES);
        r = -EBADMSG;
    } else if (memcmp(buf, OM_CAPTURE_MAGIC, 8) != 0) {
        snprintf(err, errlen, "capture '%s': bad magic, not an omnipipe capture file", path);
        r = -EBADMSG;
    } else if (s_get32(buf + 8) != OM_CAPTURE_FORMAT_VERSION) {
        snprintf(err, errlen, "capture '%s': format version %u, this build reads %u", path,
                 s_get32(buf + 8), OM_CAPTURE_FORMAT_VERSION);
        r = -EPROTO;
    } else if (s_get32(buf + 12) != OM_PROTO_VERSION) {
        snprintf(err, errlen, "capture '%s': recorded with proto_version %u, this build speaks %u",
                 path, s_get32(buf + 12), OM_PROTO_VERSION);
        r = -EPROTO;
    }
    if (r < 0) {
        om_capture_reader_free(rd);
        return r;
    }
    rd->proto_version = s_get32(buf + 12);
    memcpy(rd->stage, buf + 16, 16);
    rd->stage[16] = '\0';
    rd->off = OM_CAPTURE_HEADER_BYTES;
    *ret = rd;
    return 0;
}

om_capture_reader_t *om_capture_reader_free(om_capture_reader_t *r) {
    if (!r)
        return NULL;
    free(r->buf);
    free(r);
    return NULL;
}

const char *om_capture_reader_stage(const om_capture_reader_t *r) { return r->stage; }
uint32_t om_capture_reader_proto_version(const om_capture_reader_t *r) { return r->proto_version; }

int om_capture_reader_next(om_capture_reader_t *r, om_arena_t *a, Omnipipe__RecordEntry **ret,
                           char *err, size_t errlen) {
    size_t left = r->len - r->off;
    if (left == 0)
        return 0;
    if (left < 4) {
        snprintf(err, errlen, "record %" PRIu64 " at offset %zu: truncated length field (%zu of 4 bytes)",
                 r->n_read, r->off, left);
        return -EBADMSG;
    }
    uint32_t n = s_get32(r->buf + r->off);
    if (n > OM_CAPTURE_MAX_RECORD) {
        snprintf(err, errlen, "record %" PRIu64 " at offset %zu: corrupted length %u (limit %u)",
                 r->n_read, r->off, n, OM_CAPTURE_MAX_RECORD);
        return -EBADMSG;
    }
    if ((size_t)n + 8 > left) {
        snprintf(err, errlen, "record %" PRIu64 " at offset %zu: truncated (needs %u bytes, %zu left)",
                 r->n_read, r->off, n + 8, left);
        return -EBADMSG;
    }
    const unsigned char *p = r->buf + r->off + 4;
    if (om_capture_crc32(p, n) != s_get32(p + n)) {
        snprintf(err, errlen, "record %" PRIu64 " at offset %zu: checksum mismatch (corrupted)",
                 r->n_read, r->off);
        return -EBADMSG;
    }
    Omnipipe__RecordEntry *e = omnipipe__record_entry__unpack(om_arena_allocator(a), n, p);
    if (!e) {
        snprintf(err, errlen, "record %" PRIu64 " at offset %zu: not a RecordEntry", r->n_read,
                 r->off);
        return -EBADMSG;
    }
    r->off += (size_t)n + 8;
    r->n_read++;
    *ret = e;
    return 1;
}

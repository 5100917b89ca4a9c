/* om_pbtext.c: descriptor-driven text rendering of protobuf-c messages; see om_pbtext.h. */
#include "om_pbtext.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define OM_PBTEXT_MAX_BYTES 256 /* longer bytes fields are cut */

int om_pbtext_printf(om_pbtext_t *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if (t->len + (size_t)n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            return -ENOMEM;
        t->buf = b;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->buf + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
    return 0;
}

void om_pbtext_done(om_pbtext_t *t) {
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static int s_bytes(om_pbtext_t *t, const uint8_t *p, size_t n) {
    bool printable = true;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 && p[i] != '\n' && p[i] != '\t')
            printable = false;
    size_t m = n > OM_PBTEXT_MAX_BYTES ? OM_PBTEXT_MAX_BYTES : n;
    int r = om_pbtext_printf(t, printable ? "\"" : "0x");
    for (size_t i = 0; r == 0 && i < m; i++) {
        if (!printable)
            r = om_pbtext_printf(t, "%02x", p[i]);
        else if (p[i] == '"' || p[i] == '\\')
            r = om_pbtext_printf(t, "\\%c", p[i]);
        else if (p[i] == '\n')
            r = om_pbtext_printf(t, "\\n");
        else if (p[i] == '\t')
            r = om_pbtext_printf(t, "\\t");
        else
            r = om_pbtext_printf(t, "%c", p[i]);
    }
    if (r == 0 && printable)
        r = om_pbtext_printf(t, "\"");
    if (r == 0 && m < n)
        r = om_pbtext_printf(t, " ...(%zu bytes)", n);
    return r;
}

static int s_value(om_pbtext_t *t, const ProtobufCFieldDescriptor *f, const void *v, int indent) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return om_pbtext_printf(t, "%" PRId32, *(const int32_t *)v);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return om_pbtext_printf(t, "%" PRIu32, *(const uint32_t *)v);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return om_pbtext_printf(t, "%" PRId64, *(const int64_t *)v);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return om_pbtext_printf(t, "%" PRIu64, *(const uint64_t *)v);
    case PROTOBUF_C_TYPE_FLOAT:
        return om_pbtext_printf(t, "%.9g", (double)*(const float *)v);
    case PROTOBUF_C_TYPE_DOUBLE:
        return om_pbtext_printf(t, "%.17g", *(const double *)v);
    case PROTOBUF_C_TYPE_BOOL:
        return om_pbtext_printf(t, "%s", *(const protobuf_c_boolean *)v ? "true" : "false");
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)v);
        return ev ? om_pbtext_printf(t, "%s", ev->name) : om_pbtext_printf(t, "%d", *(const int *)v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)v;
        return s ? s_bytes(t, (const uint8_t *)s, strlen(s)) : om_pbtext_printf(t, "null");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = v;
        return s_bytes(t, b->data, b->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)v;
        if (!m)
            return om_pbtext_printf(t, "null");
        int r = om_pbtext_printf(t, "{\n");
        if (r == 0)
            r = om_pbtext_message(t, m, indent + 2);
        if (r == 0)
            r = om_pbtext_printf(t, "%*s}", indent, "");
        return r;
    }
    }
    return om_pbtext_printf(t, "?");
}

static size_t s_elem_size(ProtobufCType type) {
    switch (type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4;
    }
}

int om_pbtext_message(om_pbtext_t *t, const ProtobufCMessage *msg, int indent) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const char *base = (const char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *member = base + f->offset;
        int r = 0;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            if (n == 0)
                continue;
            const char *arr = *(char *const *)member;
            size_t es = s_elem_size(f->type);
            bool scalar = f->type != PROTOBUF_C_TYPE_MESSAGE;
            if (scalar) {
                r = om_pbtext_printf(t, "%*s%s: [", indent, "", f->name);
                for (size_t k = 0; r == 0 && k < n; k++) {
                    if (k)
                        r = om_pbtext_printf(t, ", ");
                    if (r == 0)
                        r = s_value(t, f, arr + k * es, indent);
                }
                if (r == 0)
                    r = om_pbtext_printf(t, "]\n");
            } else {
                for (size_t k = 0; r == 0 && k < n; k++) {
                    r = om_pbtext_printf(t, "%*s%s[%zu]: ", indent, "", f->name, k);
                    if (r == 0)
                        r = s_value(t, f, arr + k * es, indent);
                    if (r == 0)
                        r = om_pbtext_printf(t, "\n");
                }
            }
        } else {
            bool present;
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
                present = *(const uint32_t *)(base + f->quantifier_offset) == f->id;
            else if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING)
                present = *(void *const *)member != NULL;
            else if (f->quantifier_offset)
                present = *(const protobuf_c_boolean *)(base + f->quantifier_offset);
            else
                present = true;
            if (!present)
                continue;
            r = om_pbtext_printf(t, "%*s%s: ", indent, "", f->name);
            if (r == 0)
                r = s_value(t, f, member, indent);
            if (r == 0)
                r = om_pbtext_printf(t, "\n");
        }
        if (r < 0)
            return r;
    }
    return 0;
}

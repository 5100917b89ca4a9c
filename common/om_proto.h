/* om_proto.h: the wire protocol version and the stage names every daemon and client agree on.
 *
 * OM_PROTO_VERSION is stamped into every Header; a peer speaking another version is refused with a
 * PROTOCOL Status (om_msg_check_version). Bump it whenever proto/omnipipe.proto changes in a way that
 * breaks decoding or meaning. */
#ifndef OM_PROTO_H
#define OM_PROTO_H

#include "omnipipe.pb-c.h"

#define OM_PROTO_VERSION 1u

#define OM_STAGE_CLIENT "client"
#define OM_STAGE_TOKENIZER "tokenizer"
#define OM_STAGE_MM_PREP "mm_prep"
#define OM_STAGE_ENGINE "engine"
#define OM_STAGE_DECODER "decoder"

#endif

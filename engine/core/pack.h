/*
 * pack.h - the value codec: how Lua values cross between states.
 *
 * Arguments, return values, records and channel items travel between Lua
 * states (threads today, pipes and the network later) as one self-contained,
 * versioned byte string. Decoding never trusts its input: every length,
 * count, reference and nesting level is checked against the bytes present.
 *
 * Message layout (all integers are unsigned LEB128 varints unless noted):
 *   byte  LP_PACK_VERSION
 *   uvar  number of values
 *   value ...
 * Each value starts with a tag byte (lp_pack_tag); pack.c describes each.
 * pack.c encodes, unpack.c decodes, value.c is the C side (luapool_values,
 * luapool_cursor).
 */
#ifndef LP_PACK_H
#define LP_PACK_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#define LP_PACK_VERSION 1
#define LP_PACK_MAXDEPTH 200 /* nesting of tables, encoder and decoder */
#define LP_BUF_INLINE 40     /* bytes held without a heap allocation */

/* The tag byte that starts each value, format version 1. */
typedef enum lp_pack_tag {
  LP_TAG_NIL = 0,
  LP_TAG_FALSE = 1,
  LP_TAG_TRUE = 2,
  LP_TAG_INT = 3,    /* uvar zigzag(v) */
  LP_TAG_FLOAT = 4,  /* 8 bytes, IEEE 754 binary64, little-endian */
  LP_TAG_STRING = 5, /* uvar len, then len bytes */
  LP_TAG_TABLE = 6,  /* uvar narr, uvar nhash, then the items */
  LP_TAG_REF = 7,    /* uvar i: the i-th table of the message */
  LP_TAG_FUNC = 8    /* uvar len, then a task function's name */
} lp_pack_tag;

/* A growable byte buffer. Small contents live inline, so packing a few
 * scalar arguments never calls malloc. The owner frees with lp_buf_free. */
typedef struct lp_buf {
  char *data; /* points to inline or to the heap */
  size_t len;
  size_t cap;
  char inline_[LP_BUF_INLINE];
} lp_buf;

void lp_buf_init(lp_buf *b);
void lp_buf_free(lp_buf *b);
void lp_buf_reset(lp_buf *b); /* len = 0, keeps the allocation */
/* Moves src's contents into dst (dst must be freed or fresh); src is left empty. */
void lp_buf_move(lp_buf *dst, lp_buf *src);
int lp_buf_reserve(lp_buf *b, size_t extra); /* 0, or -1 when out of memory */
int lp_buf_append(lp_buf *b, const void *p, size_t n);

/* How the encoder names a function value (task functions travel by name).
 * Returns the name, or NULL when the function is not a task function; the
 * pointer must stay valid until the pack call returns. */
typedef const char *(*lp_fn_name_cb)(lua_State *L, int idx, void *ud);
/* How the decoder turns a function name back into a value: pushes exactly
 * one value (the function) and returns 0, or returns -1 to refuse. */
typedef int (*lp_fn_push_cb)(lua_State *L, const char *name, size_t len, void *ud);

typedef struct lp_pack_ctx {
  lp_fn_name_cb fn_name; /* NULL: functions are refused */
  lp_fn_push_cb fn_push; /* NULL: functions decode as their name string */
  void *ud;
  int argbase; /* number of the first value in error messages ("argument N") */
} lp_pack_ctx;

/* Packs the n stack values starting at index first into out (appending a
 * complete message). On refusal returns -1, leaves out as it was, leaves the
 * stack as it was, and writes into err a message such as
 *   argument 2 (at .cfg.cb): cannot send a function
 * Never raises a Lua error except for memory errors from the Lua allocator. */
int lp_pack_values(lua_State *L, int first, int n, lp_buf *out, const lp_pack_ctx *ctx, char *err,
                   size_t errlen);

/* Pushes the values of a message onto L and stores their count in *nvalues.
 * On malformed input returns -1 with a message in err and the stack as it
 * was. Never raises a Lua error except for memory errors. */
int lp_unpack_values(lua_State *L, const char *p, size_t len, const lp_pack_ctx *ctx, int *nvalues,
                     char *err, size_t errlen);

/* Builders for C callers that have no lua_State (the embedding API, the
 * process protocol). Call lp_pack_begin with the number of values, then one
 * put per value. Tables: lp_pack_put_table(narr, nhash) followed by narr
 * values, then nhash key/value pairs. Each returns 0 or -1 (out of memory). */
int lp_pack_begin(lp_buf *out, uint32_t nvalues);
int lp_pack_put_nil(lp_buf *out);
int lp_pack_put_bool(lp_buf *out, int v);
int lp_pack_put_int(lp_buf *out, int64_t v);
int lp_pack_put_float(lp_buf *out, double v);
int lp_pack_put_string(lp_buf *out, const char *s, size_t len);
int lp_pack_put_table(lp_buf *out, uint32_t narr, uint32_t nhash);

/* Fast path for reporters: if the message holds exactly one string value,
 * stores a pointer into p and its length and returns 1; otherwise 0. */
int lp_pack_single_string(const char *p, size_t len, const char **s, size_t *slen);

/* Fast path for reporters: if the message holds exactly one nil, boolean,
 * integer or float, writes it as Lua's tostring would into buf (at least
 * 32 bytes) and returns its length; otherwise returns 0. */
int lp_pack_scalar_text(const char *p, size_t len, char *buf, size_t buflen);

/* The number of values of a message (its header), or 0 when the header is
 * malformed. */
int lp_pack_count(const char *p, size_t len);

/* Checks that a message is well-formed without a lua_State. Returns 0 or -1
 * with a message in err. Used on bytes received from outside. */
int lp_pack_validate(const char *p, size_t len, char *err, size_t errlen);

#endif

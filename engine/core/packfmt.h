/*
 * packfmt.h - the value codec's own reading of its bytes, shared by its
 * files only: the decoder (unpack.c), the encoder's error paths (pack.c)
 * and the C cursor (value.c). Varints, zigzag integers and floats are read
 * here and nowhere else, so the readers of the format cannot disagree.
 * Static inline: the decoder's hot path keeps its speed.
 */
#ifndef LP_PACKFMT_H
#define LP_PACKFMT_H

#include <stdint.h>
#include <string.h>

#include <lua.h>

#include "pack.h"

_Static_assert(sizeof(lua_Number) == 8, "floats travel as IEEE 754 binary64");

#define LP_PACK_MAXVALUES 100000 /* values in one message; keeps lua_checkstack honest */
#define STR_(x) #x
#define STR(x) STR_(x)
#define TOO_DEEP "table nesting deeper than " STR(LP_PACK_MAXDEPTH)

enum { SEGMAX = 64 }; /* bytes of one step of a path, or of a quoted name */

/* Functions are refused, and decode as their name string. */
extern const lp_pack_ctx lp_pack_default_ctx;

/* Writes k as a quoted, escaped Lua string of at most cap bytes (NUL
 * included), cutting it with ... when it does not fit. Returns the length. */
size_t lp_pack_quote(char *s, size_t cap, const char *k, size_t len);

/* A reading of a message. One parser serves lp_unpack_values and
 * lp_pack_validate (L == NULL), so the two cannot disagree about what is
 * well-formed. */
typedef struct dec {
  lua_State *L; /* NULL when only validating */
  const lp_pack_ctx *ctx;
  const uint8_t *start, *p, *end;
  int refs;         /* stack index of the number -> table list; 0 until a table is met */
  uint64_t ntables; /* tables numbered so far */
  size_t budget;    /* table slots left to preallocate; a bogus count cannot exceed len */
  char *err;        /* output: what is wrong (NULL with errlen 0: not said) */
  size_t errlen;
} dec;

/* Writes "bad message: what (at byte N)" into d->err; returns -1. */
int lp_pack_bad(dec *d, const char *what);

/* Reads a uvar at d->p into *v: 0, or -1 (truncated, overflowing, overlong).
 * The -1 is written here, not taken from lp_pack_bad, so that the compiler
 * sees *v set on every 0. */
static inline int getu(dec *d, uint64_t *v) {
  const uint8_t *p = d->p;
  if (p < d->end && *p < 0x80) { /* the common one-byte case */
    *v = *p;
    d->p = p + 1;
    return 0;
  }
  uint64_t r = 0;
  for (unsigned shift = 0;; shift += 7) {
    if (p == d->end) {
      lp_pack_bad(d, "truncated");
      return -1;
    }
    uint8_t c = *p++;
    if (shift == 63 && c > 1) {
      lp_pack_bad(d, "varint overflows 64 bits");
      return -1;
    }
    r |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      if (c == 0 && shift > 0) {
        lp_pack_bad(d, "overlong varint");
        return -1;
      }
      break;
    }
  }
  d->p = p;
  *v = r;
  return 0;
}

static inline uint64_t zigzag(int64_t v) {
  uint64_t u = (uint64_t)v;
  return (u << 1) ^ (0 - (u >> 63));
}

static inline int64_t unzigzag(uint64_t u) { return (int64_t)((u >> 1) ^ (0 - (u & 1))); }

/* The 8 little-endian bytes at p (the caller checked they are there). */
static inline double get_float(const uint8_t *p) {
  uint64_t u = 0;
  double v;
  for (int i = 0; i < 8; i++) u |= (uint64_t)p[i] << (8 * i);
  memcpy(&v, &u, 8);
  return v;
}

#endif

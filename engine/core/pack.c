/*
 * pack.c - the value codec's encoder: Lua values in, one self-contained byte
 * string out (lp_pack_values), and the builders for C callers. The way back
 * into another state is unpack.c; the C side (luapool_values and
 * luapool_cursor) is value.c.
 *
 * Lua states share nothing (SPEC section 4), so every argument, result, emitted
 * value and channel item is deep-copied through this format. The same bytes
 * cross threads today and pipes later, so decoding treats its input as hostile:
 * a malformed message is refused with a message, never trusted, never a crash.
 *
 * Format, version 1. A "uvar" is an unsigned LEB128 varint: 7 bits per byte,
 * least significant group first, the high bit set on every byte but the last;
 * at most 10 bytes for 64 bits, never overlong (a varint of more than one byte
 * does not end in 0x00). A message is
 *     0x01              the version, LP_PACK_VERSION
 *     uvar n            the number of values, at most LP_PACK_MAXVALUES
 *     value * n         and nothing after them
 * and a value is a tag byte and its payload:
 *     0x00 nil
 *     0x01 false
 *     0x02 true
 *     0x03 integer   uvar zigzag(v): 0, -1, 1, -2, ... map to 0, 1, 2, 3, ...
 *     0x04 float     8 bytes, IEEE 754 binary64, little-endian; NaN, infinities
 *                    and -0.0 survive, and 3.0 stays a float while 3 stays an
 *                    integer (Lua 5.4 keeps the subtypes apart, and so do we)
 *     0x05 string    uvar len, then len bytes (any bytes, zeros included)
 *     0x06 table     uvar narr, uvar nhash, then narr values for t[1..narr]
 *                    (a nil leaves a hole), then nhash key/value pairs
 *     0x07 backref   uvar i: the same table as the i-th 0x06 of the message,
 *                    counting from 0 in the order the tags appear. A table is
 *                    numbered when its tag is read, before its contents, so a
 *                    table can refer to itself (t.self = t) and shared
 *                    sub-tables decode as one table.
 *     0x08 function  uvar len, then the name: a task function travels by name
 * Tables are copied raw: metatables are not sent. The array part is t[1..n] for
 * n = #t when at least half of 1..n is present; otherwise every entry is a
 * pair, so a sparse {[1e9] = 1} costs one pair and not a billion nils. Keys may
 * be any sendable value except nil and NaN (a message with those is malformed).
 * Tables nest at most LP_PACK_MAXDEPTH deep, counting only tags 0x06 (a
 * back-reference does not nest), in the encoder and in the decoder alike.
 *
 * Refusals name the value and the path inside it: `.name` for identifier keys,
 * `[3]`, `[2.5]`, `["a b"]` (escaped, long keys cut with ...), `[true]`,
 * `[table]` for a value whose key is a table, and `(key)` to step into a key
 * itself: `argument 1 (at .t(key).f): cannot send a function` means the
 * function sits at field f of a table used as a key in field t. Long paths
 * keep their beginning and end around "...".
 *
 * The encoder allocates no Lua object for scalars and strings: the map of seen
 * tables (a Lua table, table -> number) is made when the first table is met,
 * and the decoder's number -> table list likewise. Everything either pushes
 * lives above the caller's top and goes with one lua_settop.
 */
#include "pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "packfmt.h"

/* ---- lp_buf ---- */

void lp_buf_init(lp_buf *b) {
  b->data = b->inline_;
  b->len = 0;
  b->cap = LP_BUF_INLINE;
}

void lp_buf_free(lp_buf *b) {
  if (b->data != b->inline_) free(b->data);
  lp_buf_init(b);
}

void lp_buf_reset(lp_buf *b) { b->len = 0; }

/* dst's old fields are not read: it may be fresh memory. */
void lp_buf_move(lp_buf *dst, lp_buf *src) {
  if (src->data == src->inline_) {
    memcpy(dst->inline_, src->inline_, src->len);
    dst->data = dst->inline_;
  } else {
    dst->data = src->data;
  }
  dst->len = src->len;
  dst->cap = src->cap;
  lp_buf_init(src);
}

int lp_buf_reserve(lp_buf *b, size_t extra) {
  if (extra <= b->cap - b->len) return 0;
  if (extra > SIZE_MAX - b->len) return -1;
  size_t need = b->len + extra, cap = b->cap < LP_BUF_INLINE ? LP_BUF_INLINE : b->cap;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *d;
  if (b->data == b->inline_) {
    if (!(d = malloc(cap))) return -1;
    memcpy(d, b->inline_, b->len);
  } else if (!(d = realloc(b->data, cap))) {
    return -1;
  }
  b->data = d;
  b->cap = cap;
  return 0;
}

int lp_buf_append(lp_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (lp_buf_reserve(b, n)) return -1;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

/* ---- writing ---- */

/* Where the next n bytes go, or NULL when memory runs out. */
static inline uint8_t *room(lp_buf *b, size_t n) {
  if (b->cap - b->len < n && lp_buf_reserve(b, n)) return NULL;
  return (uint8_t *)b->data + b->len;
}

static inline size_t putu(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static inline int put_byte(lp_buf *b, int tag) {
  uint8_t *p = room(b, 1);
  if (!p) return -1;
  *p = (uint8_t)tag;
  b->len++;
  return 0;
}

static inline size_t uvarlen(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* Room is asked for exactly, not for the longest varint, so that a message
 * that fits the inline buffer stays there. */
static inline int put_tagu(lp_buf *b, int tag, uint64_t v) {
  size_t n = 1 + uvarlen(v);
  uint8_t *p = room(b, n);
  if (!p) return -1;
  p[0] = (uint8_t)tag;
  putu(p + 1, v);
  b->len += n;
  return 0;
}

static inline int put_bytes(lp_buf *b, int tag, const char *s, size_t len) {
  size_t n = 1 + uvarlen(len);
  uint8_t *p = len > SIZE_MAX - 11 ? NULL : room(b, n + len);
  if (!p) return -1;
  p[0] = (uint8_t)tag;
  putu(p + 1, len);
  if (len) memcpy(p + n, s, len);
  b->len += n + len;
  return 0;
}

static inline int put_float(lp_buf *b, double v) {
  uint8_t *p = room(b, 9);
  if (!p) return -1;
  uint64_t u;
  memcpy(&u, &v, 8);
  p[0] = LP_TAG_FLOAT;
  for (int i = 0; i < 8; i++) p[1 + i] = (uint8_t)(u >> (8 * i));
  b->len += 9;
  return 0;
}

static inline int put_table_header(lp_buf *b, uint64_t narr, uint64_t nhash) {
  uint8_t *p = room(b, 21);
  if (!p) return -1;
  p[0] = LP_TAG_TABLE;
  size_t n = 1 + putu(p + 1, narr);
  b->len += n + putu(p + n, nhash);
  return 0;
}

/* ---- the encoder ---- */

enum { F_INDEX, F_KEY, F_INKEY }; /* t[i] of the array part; value of key; the key itself */

typedef struct frame {
  int kind;
  int key;       /* F_KEY: stack index of the key (lua_next keeps it there) */
  lua_Integer i; /* F_INDEX: the index */
} frame;

typedef struct enc {
  lua_State *L;
  const lp_pack_ctx *ctx;
  lp_buf *out;
  int seen;            /* stack index of the table -> number map; 0 until a table is met */
  lua_Integer ntables; /* tables numbered so far */
  int arg;             /* 0-based position of the value being packed */
  int nframes;         /* path[0..nframes) leads from the value to where we are */
  char *err;           /* output: the refusal */
  size_t errlen;
  frame path[LP_PACK_MAXDEPTH];
} enc;

enum { PATH_HEAD = 40, PATH_TAIL = 72, PATH_WHOLE = 120 };

static int is_ident(const char *k, size_t len) {
  static const char *const kw[] = {"and",   "break", "do",       "else", "elseif", "end",
                                   "false", "for",   "function", "goto", "if",     "in",
                                   "local", "nil",   "not",      "or",   "repeat", "return",
                                   "then",  "true",  "until",    "while"};
  if (len == 0 || len > 40 || (k[0] >= '0' && k[0] <= '9')) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = k[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return 0;
  }
  for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
    if (strlen(kw[i]) == len && memcmp(kw[i], k, len) == 0) return 0;
  return 1;
}

size_t lp_pack_quote(char *s, size_t cap, const char *k, size_t len) {
  size_t n = 0, i;
  s[n++] = '"';
  for (i = 0; i < len && n + 10 < cap; i++) {
    unsigned char c = (unsigned char)k[i];
    if (c == '"' || c == '\\') {
      s[n++] = '\\';
      s[n++] = (char)c;
    } else if (c == '\n' || c == '\t' || c == '\r') {
      s[n++] = '\\';
      s[n++] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
    } else if (c < 0x20 || c == 0x7f) {
      int digit_next = i + 1 < len && k[i + 1] >= '0' && k[i + 1] <= '9';
      n += (size_t)snprintf(s + n, cap - n, digit_next ? "\\%03d" : "\\%d", c);
    } else {
      s[n++] = (char)c;
    }
  }
  if (i < len) {
    memcpy(s + n, "...", 3);
    n += 3;
  }
  s[n++] = '"';
  s[n] = '\0';
  return n;
}

/* Renders the key at stack index idx as a path segment. Never converts the
 * key in place: lua_next still needs it. */
static size_t key_segment(lua_State *L, int idx, char *s) {
  int n;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *k = lua_tolstring(L, idx, &len);
      if (is_ident(k, len)) {
        n = snprintf(s, SEGMAX, ".%s", k);
        break;
      }
      s[0] = '[';
      size_t q = 1 + lp_pack_quote(s + 1, SEGMAX - 2, k, len);
      s[q++] = ']';
      s[q] = '\0';
      return q;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        n = snprintf(s, SEGMAX, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)lua_tointeger(L, idx));
      } else {
        char num[40];
        snprintf(num, sizeof num, "%.14g", (double)lua_tonumber(L, idx));
        int looks_int = num[strspn(num, "-0123456789")] == '\0';
        n = snprintf(s, SEGMAX, "[%s%s]", num, looks_int ? ".0" : "");
      }
      break;
    case LUA_TBOOLEAN:
      n = snprintf(s, SEGMAX, "[%s]", lua_toboolean(L, idx) ? "true" : "false");
      break;
    default: n = snprintf(s, SEGMAX, "[%s]", luaL_typename(L, idx)); break;
  }
  return n < 0 ? 0 : (size_t)n < SEGMAX ? (size_t)n : SEGMAX - 1;
}

static size_t segment(const enc *e, int i, char *s) {
  const frame *f = &e->path[i];
  if (f->kind == F_INDEX) {
    int n = snprintf(s, SEGMAX, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)f->i);
    return n < 0 ? 0 : (size_t)n;
  }
  if (f->kind == F_INKEY) {
    memcpy(s, "(key)", 6);
    return 5;
  }
  return key_segment(e->L, f->key, s);
}

/* The path to where the encoder stands, its middle cut out when long.
 * out must hold PATH_WHOLE + SEGMAX bytes. */
static void render_path(const enc *e, char *out) {
  char s[SEGMAX];
  unsigned char lens[LP_PACK_MAXDEPTH];
  size_t total = 0, n = 0;
  int head = e->nframes, tail = e->nframes;
  for (int i = 0; i < e->nframes; i++) total += lens[i] = (unsigned char)segment(e, i, s);
  if (total > PATH_WHOLE) {
    size_t h = 0, t = 0;
    for (head = 0; head < e->nframes && h + lens[head] <= PATH_HEAD; head++) h += lens[head];
    for (tail = e->nframes; tail > head && t + lens[tail - 1] <= PATH_TAIL; tail--)
      t += lens[tail - 1];
  }
  for (int i = 0; i < e->nframes; i++) {
    if (i == head && head < tail) {
      memcpy(out + n, "...", 3);
      n += 3;
      i = tail - 1;
      continue;
    }
    n += segment(e, i, out + n);
  }
  out[n] = '\0';
}

/* Fills err with what went wrong and where; returns -1 for the caller to pass up. */
static int refuse(enc *e, const char *what, const char *what2) {
  char path[PATH_WHOLE + SEGMAX];
  render_path(e, path);
  int arg = e->ctx->argbase + e->arg;
  if (path[0])
    snprintf(e->err, e->errlen, "argument %d (at %s): %s%s", arg, path, what, what2);
  else
    snprintf(e->err, e->errlen, "argument %d: %s%s", arg, what, what2);
  return -1;
}

static int oom(enc *e) {
  snprintf(e->err, e->errlen, "out of memory");
  return -1;
}

static int enc_table(enc *e, int t);

/* Tables, functions and refusals: off the hot path. */
static int enc_other(enc *e, int idx, int type) {
  lua_State *L = e->L;
  const char *name = NULL;
  if (type == LUA_TTABLE) return enc_table(e, idx);
  if (type != LUA_TFUNCTION) return refuse(e, "cannot send a ", lua_typename(L, type));
  if (e->ctx->fn_name) {
    int top = lua_gettop(L);
    name = e->ctx->fn_name(L, idx, e->ctx->ud);
    lua_settop(L, top);
  }
  if (!name) return refuse(e, "cannot send a ", "function");
  return put_bytes(e->out, LP_TAG_FUNC, name, strlen(name)) ? oom(e) : 0;
}

/* Ifs rather than a switch: the common types cost no indirect jump. */
static inline int enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  int type = lua_type(L, idx), r;
  if (type == LUA_TNUMBER) {
    if (lua_isinteger(L, idx))
      r = put_tagu(e->out, LP_TAG_INT, zigzag(lua_tointeger(L, idx)));
    else
      r = put_float(e->out, lua_tonumber(L, idx));
  } else if (type == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    r = put_bytes(e->out, LP_TAG_STRING, s, len);
  } else if (type == LUA_TNIL) {
    r = put_byte(e->out, LP_TAG_NIL);
  } else if (type == LUA_TBOOLEAN) {
    r = put_byte(e->out, lua_toboolean(L, idx) ? LP_TAG_TRUE : LP_TAG_FALSE);
  } else {
    return enc_other(e, idx, type);
  }
  return r ? oom(e) : 0;
}

/* A table already met becomes a back-reference; a new one is numbered before
 * its contents are written, which is what lets cycles terminate. */
static int enc_table(enc *e, int t) {
  lua_State *L = e->L;
  if (!lua_checkstack(L, 6)) return refuse(e, "out of Lua stack space", "");
  if (!e->seen) {
    lua_createtable(L, 0, 8);
    e->seen = lua_gettop(L);
  }
  lua_pushvalue(L, t);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
    lua_Integer ref = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return put_tagu(e->out, LP_TAG_REF, (uint64_t)ref) ? oom(e) : 0;
  }
  lua_pop(L, 1);
  if (e->nframes >= LP_PACK_MAXDEPTH) return refuse(e, TOO_DEEP, "");
  lua_pushvalue(L, t);
  lua_pushinteger(L, e->ntables++);
  lua_rawset(L, e->seen);

  /* First pass: how many entries, and how many of them are in 1..#t. */
  lua_Unsigned narr = lua_rawlen(L, t);
  uint64_t total = 0, inarr = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    total++;
    if (lua_isinteger(L, -2)) {
      lua_Integer k = lua_tointeger(L, -2);
      if (k >= 1 && (lua_Unsigned)k <= narr) inarr++;
    }
    lua_pop(L, 1);
  }
  if (inarr * 2 < narr) narr = inarr = 0; /* too sparse for an array part */
  if (put_table_header(e->out, narr, total - inarr)) return oom(e);

  frame *f = &e->path[e->nframes++];
  for (lua_Unsigned i = 1; i <= narr; i++) {
    f->kind = F_INDEX;
    f->i = (lua_Integer)i;
    lua_rawgeti(L, t, (lua_Integer)i);
    if (enc_value(e, lua_gettop(L))) return -1;
    lua_pop(L, 1);
  }
  uint64_t npairs = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int v = lua_gettop(L);
    if (narr && lua_isinteger(L, v - 1)) {
      lua_Integer k = lua_tointeger(L, v - 1);
      if (k >= 1 && (lua_Unsigned)k <= narr) {
        lua_pop(L, 1);
        continue;
      }
    }
    f->kind = F_INKEY;
    if (enc_value(e, v - 1)) return -1;
    f->kind = F_KEY;
    f->key = v - 1;
    if (enc_value(e, v)) return -1;
    lua_pop(L, 1);
    npairs++;
  }
  e->nframes--;
  /* Only a callback that edits tables mid-pack could break the count. */
  if (npairs != total - inarr) return refuse(e, "table changed while being packed", "");
  return 0;
}

const lp_pack_ctx lp_pack_default_ctx = {NULL, NULL, NULL, 1};

/* Scalars push nothing, so the stack needs restoring only once the seen map
 * exists; it sits just above the caller's top. A memory error raised by Lua
 * unwinds past all this and leaves a partial message in out, which the
 * caller, catching the error, throws away. */
int lp_pack_values(lua_State *L, int first, int n, lp_buf *out, const lp_pack_ctx *ctx, char *err,
                   size_t errlen) {
  size_t len0 = out->len;
  enc e;
  e.L = L;
  e.ctx = ctx ? ctx : &lp_pack_default_ctx;
  e.out = out;
  e.seen = 0;
  e.ntables = 0;
  e.nframes = 0;
  e.err = err;
  e.errlen = err ? errlen : 0;
  if (n < 0 || n > LP_PACK_MAXVALUES) {
    snprintf(e.err, e.errlen, "too many values (%d, at most %d)", n, LP_PACK_MAXVALUES);
    return -1;
  }
  if (n > 0 && first < 0 && first > LUA_REGISTRYINDEX) first = lua_absindex(L, first);
  int was_inline = out->data == out->inline_;
  if (put_tagu(out, LP_PACK_VERSION, (uint64_t)n)) return oom(&e);
  for (e.arg = 0; e.arg < n; e.arg++) {
    if (enc_value(&e, first + e.arg)) {
      if (e.seen) lua_settop(L, e.seen - 1);
      out->len = len0;
      if (was_inline && out->data != out->inline_) { /* so a caller raising at once leaks nothing */
        memcpy(out->inline_, out->data, len0);
        free(out->data);
        out->data = out->inline_;
        out->cap = LP_BUF_INLINE;
      }
      return -1;
    }
  }
  if (e.seen) lua_settop(L, e.seen - 1);
  return 0;
}

/* ---- the builders ---- */

int lp_pack_begin(lp_buf *out, uint32_t nvalues) { return put_tagu(out, LP_PACK_VERSION, nvalues); }

int lp_pack_put_nil(lp_buf *out) { return put_byte(out, LP_TAG_NIL); }
int lp_pack_put_bool(lp_buf *out, int v) { return put_byte(out, v ? LP_TAG_TRUE : LP_TAG_FALSE); }
int lp_pack_put_int(lp_buf *out, int64_t v) { return put_tagu(out, LP_TAG_INT, zigzag(v)); }
int lp_pack_put_float(lp_buf *out, double v) { return put_float(out, v); }

int lp_pack_put_string(lp_buf *out, const char *s, size_t len) {
  return put_bytes(out, LP_TAG_STRING, s, len);
}

int lp_pack_put_table(lp_buf *out, uint32_t narr, uint32_t nhash) {
  return put_table_header(out, narr, nhash);
}

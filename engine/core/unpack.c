/*
 * unpack.c - the value codec's decoder: a message back into Lua values in
 * another state (lp_unpack_values), or checked whole without a state
 * (lp_pack_validate), and the reporters' fast looks at one-value messages.
 * The format is described in pack.c; its tags are lp_pack_tag (pack.h), its
 * varints and floats are read by packfmt.h, which the C cursor (value.c)
 * reads with too.
 *
 * One parser serves lp_unpack_values and lp_pack_validate (L == NULL), so the
 * two cannot disagree about what is well-formed. The decoder's number ->
 * table list is made when the first table is met, and goes with one
 * lua_remove; on refusal the stack is left as it was.
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "pack.h"
#include "packfmt.h"

#define MAXPREALLOC (1 << 24) /* largest table size the decoder preallocates */

int lp_pack_bad(dec *d, const char *what) {
  snprintf(d->err, d->errlen, "bad message: %s (at byte %zu)", what, (size_t)(d->p - d->start));
  return -1;
}

static inline int dec_value(dec *d, int depth, int iskey);

static int dec_func(dec *d, const char *name, size_t len, int iskey) {
  lua_State *L = d->L;
  if (!d->ctx->fn_push) {
    lua_pushlstring(L, name, len);
    return 0;
  }
  int top = lua_gettop(L);
  if (d->ctx->fn_push(L, name, len, d->ctx->ud) != 0 || lua_gettop(L) != top + 1) {
    char q[SEGMAX];
    lua_settop(L, top);
    lp_pack_quote(q, sizeof q, name, len);
    snprintf(d->err, d->errlen, "cannot restore function %s", q);
    return -1;
  }
  if (iskey && (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
                                     lua_tonumber(L, -1) != lua_tonumber(L, -1))))
    return lp_pack_bad(d, "function name restored as a nil or NaN key");
  return 0;
}

static int dec_table(dec *d, int depth) {
  lua_State *L = d->L;
  uint64_t narr, nhash;
  if (depth > LP_PACK_MAXDEPTH) return lp_pack_bad(d, TOO_DEEP);
  if (getu(d, &narr) || getu(d, &nhash)) return -1;
  size_t left = (size_t)(d->end - d->p);
  /* each array value takes a byte at least, each pair two */
  if (narr > left || nhash > left / 2 || narr + 2 * nhash > left)
    return lp_pack_bad(d, "table size exceeds the message");
  uint64_t me = d->ntables++;
  int t = 0;
  if (L) {
    if (!lua_checkstack(L, 4)) return lp_pack_bad(d, "out of Lua stack space");
    if (!d->refs) {
      lua_createtable(L, 4, 0);
      d->refs = lua_gettop(L);
    }
    size_t a = narr < d->budget ? (size_t)narr : d->budget;
    a = a < MAXPREALLOC ? a : MAXPREALLOC;
    d->budget -= a;
    size_t h = nhash < d->budget ? (size_t)nhash : d->budget;
    h = h < MAXPREALLOC ? h : MAXPREALLOC;
    d->budget -= h;
    lua_createtable(L, (int)a, (int)h);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->refs, (lua_Integer)me + 1);
    t = lua_gettop(L);
  }
  for (uint64_t i = 1; i <= narr; i++) {
    if (dec_value(d, depth, 0)) return -1;
    if (!L) continue;
    if (lua_isnil(L, -1))
      lua_pop(L, 1);
    else
      lua_rawseti(L, t, (lua_Integer)i);
  }
  for (uint64_t i = 0; i < nhash; i++) {
    if (dec_value(d, depth, 1) || dec_value(d, depth, 0)) return -1;
    if (L) lua_rawset(L, t);
  }
  return 0;
}

/* The rarer tags of dec_value. */
static int dec_other(dec *d, int tag, int depth, int iskey) {
  lua_State *L = d->L;
  uint64_t u;
  switch (tag) {
    case LP_TAG_NIL:
      if (iskey) return lp_pack_bad(d, "nil table key");
      if (L) lua_pushnil(L);
      return 0;
    case LP_TAG_FALSE:
    case LP_TAG_TRUE:
      if (L) lua_pushboolean(L, tag == LP_TAG_TRUE);
      return 0;
    case LP_TAG_FLOAT: {
      if (d->end - d->p < 8) return lp_pack_bad(d, "truncated");
      double v = get_float(d->p);
      if (iskey && v != v) return lp_pack_bad(d, "NaN table key");
      d->p += 8;
      if (L) lua_pushnumber(L, v);
      return 0;
    }
    case LP_TAG_FUNC: {
      if (getu(d, &u)) return -1;
      if (u > (uint64_t)(d->end - d->p)) return lp_pack_bad(d, "string longer than the message");
      d->p += u;
      return L ? dec_func(d, (const char *)d->p - u, (size_t)u, iskey) : 0;
    }
    case LP_TAG_TABLE: return dec_table(d, depth + 1);
    case LP_TAG_REF:
      if (getu(d, &u)) return -1;
      if (u >= d->ntables) return lp_pack_bad(d, "back-reference to a table not yet seen");
      if (L) lua_rawgeti(L, d->refs, (lua_Integer)u + 1);
      return 0;
    default: d->p--; return lp_pack_bad(d, "unknown tag");
  }
}

/* Reads one value (pushing it when there is a state). depth is the nesting of
 * the table holding it, 0 at the top; iskey refuses what Lua cannot index by. */
static inline int dec_value(dec *d, int depth, int iskey) {
  uint64_t u;
  if (d->p == d->end) return lp_pack_bad(d, "truncated");
  int tag = *d->p++;
  if (tag == LP_TAG_INT) {
    if (getu(d, &u)) return -1;
    if (d->L) lua_pushinteger(d->L, (lua_Integer)unzigzag(u));
    return 0;
  }
  if (tag == LP_TAG_STRING) {
    if (getu(d, &u)) return -1;
    if (u > (uint64_t)(d->end - d->p)) return lp_pack_bad(d, "string longer than the message");
    d->p += u;
    if (d->L) lua_pushlstring(d->L, (const char *)d->p - u, (size_t)u);
    return 0;
  }
  return dec_other(d, tag, depth, iskey);
}

static int dec_message(dec *d, const char *p, size_t len, int *nvalues) {
  uint64_t n;
  if (len == 0) {
    snprintf(d->err, d->errlen, "bad message: empty");
    return -1;
  }
  d->start = d->p = (const uint8_t *)p;
  d->end = d->p + len;
  d->refs = 0;
  d->ntables = 0;
  d->budget = len;
  if (*d->p != LP_PACK_VERSION) {
    snprintf(d->err, d->errlen, "bad message: version %d, expected %d", *d->p, LP_PACK_VERSION);
    return -1;
  }
  d->p++;
  if (getu(d, &n)) return -1;
  if (n > LP_PACK_MAXVALUES) return lp_pack_bad(d, "too many values");
  if (n > (uint64_t)(d->end - d->p)) return lp_pack_bad(d, "truncated");
  if (d->L && !lua_checkstack(d->L, (int)n + 2)) return lp_pack_bad(d, "out of Lua stack space");
  for (uint64_t i = 0; i < n; i++)
    if (dec_value(d, 0, 0)) return -1;
  if (d->p != d->end) return lp_pack_bad(d, "trailing bytes");
  *nvalues = (int)n;
  return 0;
}

int lp_unpack_values(lua_State *L, const char *p, size_t len, const lp_pack_ctx *ctx, int *nvalues,
                     char *err, size_t errlen) {
  int top = lua_gettop(L), n = 0;
  dec d;
  d.L = L;
  d.ctx = ctx ? ctx : &lp_pack_default_ctx;
  d.err = err;
  d.errlen = err ? errlen : 0;
  if (dec_message(&d, p, len, &n)) {
    lua_settop(L, top);
    *nvalues = 0;
    return -1;
  }
  if (d.refs) lua_remove(L, d.refs);
  *nvalues = n;
  return 0;
}

int lp_pack_validate(const char *p, size_t len, char *err, size_t errlen) {
  dec d;
  int n;
  d.L = NULL;
  d.ctx = &lp_pack_default_ctx;
  d.err = err;
  d.errlen = err ? errlen : 0;
  return dec_message(&d, p, len, &n);
}

int lp_pack_scalar_text(const char *p, size_t len, char *buf, size_t buflen) {
  dec d;
  uint64_t u;
  if (len < 3 || buflen < 32) return 0;
  d.start = (const uint8_t *)p;
  d.p = d.start + 3;
  d.end = d.start + len;
  d.err = NULL;
  d.errlen = 0;
  if (d.start[0] != LP_PACK_VERSION || d.start[1] != 1) return 0;
  switch (d.start[2]) {
    case LP_TAG_NIL: return len == 3 ? snprintf(buf, buflen, "nil") : 0;
    case LP_TAG_FALSE: return len == 3 ? snprintf(buf, buflen, "false") : 0;
    case LP_TAG_TRUE: return len == 3 ? snprintf(buf, buflen, "true") : 0;
    case LP_TAG_INT:
      if (getu(&d, &u) || d.p != d.end) return 0;
      return snprintf(buf, buflen, "%lld", (long long)unzigzag(u));
    case LP_TAG_FLOAT: {
      if (len != 11) return 0;
      double v = get_float(d.p);
      /* As Lua's tostring: "%.14g", and ".0" when that looks like an integer. */
      int n = snprintf(buf, buflen, LUA_NUMBER_FMT, v);
      if (buf[strspn(buf, "-0123456789")] == '\0') n += snprintf(buf + n, buflen - (size_t)n, ".0");
      return n;
    }
    default: return 0;
  }
}

int lp_pack_single_string(const char *p, size_t len, const char **s, size_t *slen) {
  dec d;
  uint64_t n;
  if (len < 4) return 0;
  d.start = (const uint8_t *)p;
  d.p = d.start + 3;
  d.end = d.start + len;
  d.err = NULL;
  d.errlen = 0;
  if (d.start[0] != LP_PACK_VERSION || d.start[1] != 1 || d.start[2] != LP_TAG_STRING) return 0;
  if (getu(&d, &n) || n != (uint64_t)(d.end - d.p)) return 0;
  *s = (const char *)d.p;
  *slen = (size_t)n;
  return 1;
}

int lp_pack_count(const char *p, size_t len) {
  dec d;
  uint64_t n;
  if (len < 2) return 0;
  d.start = (const uint8_t *)p;
  d.p = d.start + 1; /* the version byte */
  d.end = d.start + len;
  d.err = NULL;
  d.errlen = 0;
  if (getu(&d, &n) || n > LP_PACK_MAXVALUES) return 0;
  return (int)n;
}

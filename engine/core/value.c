/*
 * value.c - the value codec's C side, for callers with no lua_State (the
 * public API, worker processes): luapool_values builds the values of a
 * message one by one, and luapool_cursor reads a message's values one by
 * one. Both speak the format through the codec: the builder writes with
 * pack.c's lp_pack_put_*, the cursor reads with packfmt.h's readers and
 * the tags of pack.h, after lp_pack_validate has checked the bytes whole.
 */
#include "value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "packfmt.h"

/* ---- values built from C ---- */

/* The values still owed to an open table: array items, then hash keys and
 * values alternating (a key when hash is even). */
typedef struct owed {
  uint32_t arr;
  uint64_t hash;
} owed;

struct luapool_values {
  lp_buf body;                 /* the encoded values, without the message header */
  uint32_t count;              /* top-level values */
  owed open[LP_PACK_MAXDEPTH]; /* tables still being filled, innermost last */
  int depth;
};

luapool_values *luapool_values_new(void) {
  luapool_values *v = malloc(sizeof *v);
  if (!v) return NULL;
  lp_buf_init(&v->body);
  v->count = 0;
  v->depth = 0;
  return v;
}

void luapool_values_reset(luapool_values *v) {
  if (!v) return;
  lp_buf_reset(&v->body);
  v->count = 0;
  v->depth = 0;
}

void luapool_values_free(luapool_values *v) {
  if (!v) return;
  lp_buf_free(&v->body);
  free(v);
}

int luapool_values_count(const luapool_values *v) { return v ? (int)v->count : 0; }

/* Whether the next value is a table key. */
static int next_is_key(const luapool_values *v) {
  if (v->depth == 0) return 0;
  const owed *o = &v->open[v->depth - 1];
  return o->arr == 0 && o->hash % 2 == 0;
}

/* One value has been written: count it against the innermost open table,
 * closing every table it completes. */
static void placed(luapool_values *v) {
  for (;;) {
    if (v->depth == 0) {
      v->count++;
      return;
    }
    owed *o = &v->open[v->depth - 1];
    if (o->arr > 0)
      o->arr--;
    else
      o->hash--;
    if (o->arr > 0 || o->hash > 0) return;
    v->depth--; /* the table is complete: it is one value of its parent */
  }
}

static int put_done(luapool_values *v, int rc) {
  if (rc != 0) return LUAPOOL_ENOMEM;
  placed(v);
  return 0;
}

int luapool_values_nil(luapool_values *v) {
  if (!v || next_is_key(v)) return LUAPOOL_EINVAL;
  return put_done(v, lp_pack_put_nil(&v->body));
}

int luapool_values_boolean(luapool_values *v, int b) {
  if (!v) return LUAPOOL_EINVAL;
  return put_done(v, lp_pack_put_bool(&v->body, b));
}

int luapool_values_integer(luapool_values *v, int64_t i) {
  if (!v) return LUAPOOL_EINVAL;
  return put_done(v, lp_pack_put_int(&v->body, i));
}

int luapool_values_number(luapool_values *v, double d) {
  if (!v || (d != d && next_is_key(v))) return LUAPOOL_EINVAL;
  return put_done(v, lp_pack_put_float(&v->body, d));
}

int luapool_values_lstring(luapool_values *v, const char *s, size_t len) {
  if (!v || (!s && len > 0)) return LUAPOOL_EINVAL;
  return put_done(v, lp_pack_put_string(&v->body, s ? s : "", len));
}

int luapool_values_string(luapool_values *v, const char *s) {
  if (!s) return LUAPOOL_EINVAL;
  return luapool_values_lstring(v, s, strlen(s));
}

int luapool_values_table(luapool_values *v, uint32_t narr, uint32_t nhash) {
  if (!v) return LUAPOOL_EINVAL;
  if (narr == 0 && nhash == 0) return put_done(v, lp_pack_put_table(&v->body, 0, 0));
  if (v->depth == LP_PACK_MAXDEPTH - 1) return LUAPOOL_EINVAL;
  if (lp_pack_put_table(&v->body, narr, nhash) != 0) return LUAPOOL_ENOMEM;
  owed *o = &v->open[v->depth++];
  o->arr = narr;
  o->hash = 2 * (uint64_t)nhash;
  return 0;
}

int lp_value_message(const luapool_values *v, lp_buf *out) {
  if (v && v->depth > 0) return LUAPOOL_EINVAL;
  if (lp_pack_begin(out, v ? v->count : 0) != 0 ||
      (v && lp_buf_append(out, v->body.data, v->body.len) != 0))
    return LUAPOOL_ENOMEM;
  return 0;
}

/* ---- reading values from C ---- */

/* A reading of the cursor's bytes, from where it stands. Its bytes were
 * validated whole, so the readers cannot fail on them. */
static dec reading(const luapool_cursor *c) {
  dec d = {0};
  d.start = d.p = (const uint8_t *)c->pos;
  d.end = (const uint8_t *)c->end;
  return d;
}

int luapool_cursor_init(luapool_cursor *c, const char *packed, size_t len) {
  char err[128];
  if (!c || !packed || lp_pack_validate(packed, len, err, sizeof err) != 0) return LUAPOOL_EINVAL;
  c->pos = packed + 1; /* the version byte */
  c->end = packed + len;
  c->tables = 0;
  dec d = reading(c);
  uint64_t n;
  if (getu(&d, &n)) return LUAPOOL_EINVAL;
  c->pos = (const char *)d.p;
  return (int)n;
}

int luapool_cursor_next(luapool_cursor *c, luapool_value *v) {
  if (!c || !v || c->pos >= c->end) return LUAPOOL_EINVAL;
  memset(v, 0, sizeof *v);
  dec d = reading(c);
  uint64_t u, u2;
  int tag = *d.p++;
  switch (tag) {
    case LP_TAG_NIL: v->type = LUAPOOL_TNIL; break;
    case LP_TAG_FALSE:
    case LP_TAG_TRUE:
      v->type = LUAPOOL_TBOOLEAN;
      v->boolean = tag == LP_TAG_TRUE;
      break;
    case LP_TAG_INT:
      if (getu(&d, &u)) return LUAPOOL_EINVAL;
      v->type = LUAPOOL_TINTEGER;
      v->integer = unzigzag(u);
      break;
    case LP_TAG_FLOAT:
      v->type = LUAPOOL_TNUMBER;
      v->number = get_float(d.p);
      d.p += 8;
      break;
    case LP_TAG_STRING:
    case LP_TAG_FUNC:
      if (getu(&d, &u)) return LUAPOOL_EINVAL;
      v->type = tag == LP_TAG_STRING ? LUAPOOL_TSTRING : LUAPOOL_TFUNCTION;
      v->len = (size_t)u;
      v->string = (const char *)d.p;
      d.p += u;
      break;
    case LP_TAG_TABLE:
      if (getu(&d, &u) || getu(&d, &u2)) return LUAPOOL_EINVAL;
      v->type = LUAPOOL_TTABLE;
      v->narr = (uint32_t)u;
      v->nhash = (uint32_t)u2;
      v->ref = c->tables++;
      break;
    case LP_TAG_REF:
      if (getu(&d, &u)) return LUAPOOL_EINVAL;
      v->type = LUAPOOL_TREF;
      v->ref = (uint32_t)u;
      break;
    default: return LUAPOOL_EINVAL;
  }
  c->pos = (const char *)d.p;
  return 0;
}

char *lp_value_summary(const char *packed, size_t len) {
  luapool_cursor cur;
  int n = luapool_cursor_init(&cur, packed, len);
  if (n < 0) return strdup("(unreadable)");
  lp_buf b;
  lp_buf_init(&b);
  lp_buf_append(&b, "(", 1);
  uint64_t inside = 0; /* values that belong to a table being skipped */
  luapool_value v;
  int first = 1;
  while (luapool_cursor_next(&cur, &v) == 0) {
    int top = inside == 0;
    if (!top) inside--;
    if (v.type == LUAPOOL_TTABLE) inside += (uint64_t)v.narr + 2 * (uint64_t)v.nhash;
    if (!top) continue;
    char tmp[80];
    if (!first) lp_buf_append(&b, ", ", 2);
    first = 0;
    switch (v.type) {
      case LUAPOOL_TBOOLEAN: snprintf(tmp, sizeof tmp, "%s", v.boolean ? "true" : "false"); break;
      case LUAPOOL_TINTEGER: snprintf(tmp, sizeof tmp, "%lld", (long long)v.integer); break;
      case LUAPOOL_TNUMBER: /* as Lua writes a float: 3.0, not 3 */
        snprintf(tmp, sizeof tmp, "%.14g", v.number);
        if (tmp[strspn(tmp, "-0123456789")] == '\0') {
          size_t k = strlen(tmp);
          if (k + 3 <= sizeof tmp) memcpy(tmp + k, ".0", 3);
        }
        break;
      case LUAPOOL_TSTRING:
        if (v.len > 60)
          snprintf(tmp, sizeof tmp, "\"...\"");
        else
          snprintf(tmp, sizeof tmp, "\"%.*s\"", (int)strnlen(v.string, v.len), v.string);
        break;
      case LUAPOOL_TNIL: snprintf(tmp, sizeof tmp, "nil"); break;
      case LUAPOOL_TFUNCTION: snprintf(tmp, sizeof tmp, "function"); break;
      default: snprintf(tmp, sizeof tmp, "table"); break;
    }
    lp_buf_append(&b, tmp, strlen(tmp));
  }
  lp_buf_append(&b, ")", 2); /* with the NUL */
  char *s = strdup(b.data);
  lp_buf_free(&b);
  return s;
}

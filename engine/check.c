/*
 * check.c - `luapool check`: the globals a script reads but never defines.
 *
 * Part of the command. The script is compiled (not run) in a plain Lua
 * state and its bytecode, as lua_dump writes it with debug information, is
 * walked: every GETTABUP on the upvalue named _ENV with a constant key is a
 * read of a global, every SETTABUP on it an assignment. A name read
 * somewhere that no code of the script assigns and that the standard
 * libraries do not provide is reported, with the line of its first read.
 *
 * Why bytecode rather than running the top level with a recording _ENV:
 * it sees the bodies of task functions too (where a misspelt global
 * otherwise surfaces only when that line runs on a worker), it runs no code
 * of the script, and it needs no stand-in for the luapool module. Its limit:
 * a global made dynamically (`_G[name] = v`, rawset) is not seen as
 * defined. The dump format is Lua 5.4's (format 0); the header is checked
 * and any other layout is refused, never misread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "progress.h"

/* Lua 5.4 opcodes and constant tags used here (lopcodes.h, lobject.h). */
enum { OP_GETTABUP = 11, OP_SETTABUP = 15 };
enum { VNIL = 0, VFALSE = 1, VTRUE = 17, VNUMINT = 3, VNUMFLT = 19, VSHRSTR = 4, VLNGSTR = 20 };

typedef struct reader {
  const unsigned char *p, *end;
  int bad;
} reader;

static unsigned byte(reader *r) {
  if (!r->p || r->p >= r->end) {
    r->bad = 1;
    return 0;
  }
  return *r->p++;
}

static size_t size(reader *r) {
  size_t x = 0;
  unsigned b;
  do {
    b = byte(r);
    x = (x << 7) | (b & 0x7f);
  } while (!(b & 0x80) && !r->bad);
  return x;
}

static const unsigned char *skip(reader *r, size_t n) {
  if ((size_t)(r->end - r->p) < n) {
    r->bad = 1;
    r->p = r->end;
    return NULL;
  }
  const unsigned char *at = r->p;
  r->p += n;
  return at;
}

typedef struct str {
  const char *s;
  size_t len;
} str;

static str string(reader *r) {
  size_t n = size(r);
  str s = {NULL, 0};
  if (n == 0) return s;
  s.s = (const char *)skip(r, n - 1);
  s.len = s.s ? n - 1 : 0;
  return s;
}

/* What the walk finds: names with the line of their first read. */
typedef struct name {
  str n;
  int line;
  int read, written;
} name;

typedef struct found {
  name *v;
  int n, cap;
  int bad;
} found;

static name *note(found *f, str s) {
  for (int i = 0; i < f->n; i++)
    if (f->v[i].n.len == s.len && memcmp(f->v[i].n.s, s.s, s.len) == 0) return &f->v[i];
  if (f->n == f->cap) {
    int cap = f->cap ? f->cap * 2 : 64;
    name *nv = realloc(f->v, sizeof *nv * (size_t)cap);
    if (!nv) {
      f->bad = 1;
      return NULL;
    }
    f->v = nv;
    f->cap = cap;
  }
  f->v[f->n] = (name){s, 0, 0, 0};
  return &f->v[f->n++];
}

/* One function prototype (and, recursively, those nested in it). */
static void function(reader *r, found *f) {
  string(r); /* source */
  int linedefined = (int)size(r);
  size(r); /* lastlinedefined */
  skip(r, 3);
  size_t ncode = size(r);
  const unsigned char *code = skip(r, ncode * 4);
  size_t nk = size(r);
  str *k = calloc(nk ? nk : 1, sizeof *k);
  if (!k) {
    f->bad = r->bad = 1;
    return;
  }
  for (size_t i = 0; i < nk && !r->bad; i++) {
    unsigned tag = byte(r);
    if (tag == VNUMINT || tag == VNUMFLT)
      skip(r, 8);
    else if (tag == VSHRSTR || tag == VLNGSTR)
      k[i] = string(r);
    else if (tag != VNIL && tag != VFALSE && tag != VTRUE)
      r->bad = 1;
  }
  size_t nup = size(r);
  skip(r, nup * 3);
  size_t nproto = size(r);
  for (size_t i = 0; i < nproto && !r->bad; i++) function(r, f);
  size_t nline = size(r);
  const unsigned char *lineinfo = skip(r, nline);
  size_t nabs = size(r);
  int *abspc = calloc(nabs ? nabs : 1, sizeof(int)),
      *absline = calloc(nabs ? nabs : 1, sizeof(int));
  for (size_t i = 0; i < nabs && !r->bad && abspc && absline; i++) {
    abspc[i] = (int)size(r);
    absline[i] = (int)size(r);
  }
  size_t nloc = size(r);
  for (size_t i = 0; i < nloc && !r->bad; i++) {
    string(r);
    size(r);
    size(r);
  }
  size_t nupname = size(r);
  int env = -1; /* the upvalue that is _ENV */
  for (size_t i = 0; i < nupname && !r->bad; i++) {
    str s = string(r);
    if (s.len == 4 && memcmp(s.s, "_ENV", 4) == 0 && env < 0) env = (int)i;
  }
  if (!abspc || !absline) f->bad = 1;
  for (size_t pc = 0; pc < ncode && env >= 0 && !r->bad && !f->bad; pc++) {
    uint32_t ins;
    memcpy(&ins, code + pc * 4, 4);
    unsigned op = ins & 0x7f, a = (ins >> 7) & 0xff, b = (ins >> 16) & 0xff, c = (ins >> 24) & 0xff;
    unsigned up = op == OP_GETTABUP ? b : a, key = op == OP_GETTABUP ? c : b;
    if ((op != OP_GETTABUP && op != OP_SETTABUP) || (int)up != env || key >= nk || !k[key].s)
      continue;
    name *nm = note(f, k[key]);
    if (!nm) break;
    if (op == OP_SETTABUP) {
      nm->written = 1;
      continue;
    }
    if (nm->read) continue;
    /* The line of pc: from the last absolute entry at or before it, add
     * the per-instruction deltas (as luaG_getfuncline does). */
    int line = linedefined;
    size_t basepc = 0;
    int from_start = 1;
    for (size_t i = 0; i < nabs; i++)
      if ((size_t)abspc[i] <= pc) {
        line = absline[i];
        basepc = (size_t)abspc[i];
        from_start = 0;
      }
    for (size_t i = from_start ? 0 : basepc + 1; i <= pc && i < nline; i++)
      line += (signed char)lineinfo[i];
    nm->read = 1;
    nm->line = line;
  }
  free(k);
  free(abspc);
  free(absline);
}

typedef struct sink {
  char *p;
  size_t len, cap;
} sink;

static int writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  sink *s = ud;
  if (s->len + sz > s->cap) {
    size_t cap = (s->len + sz) * 2;
    char *np = realloc(s->p, cap);
    if (!np) return 1;
    s->p = np;
    s->cap = cap;
  }
  memcpy(s->p + s->len, p, sz);
  s->len += sz;
  return 0;
}

static int by_line(const void *a, const void *b) {
  const name *x = a, *y = b;
  return x->line - y->line;
}

/* Protected: leaves the dump of the script (a string) at 1 and the
 * standard globals (a table) at 2. */
static int dump(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (luaL_loadfilex(L, path, "t") != LUA_OK) return lua_error(L);
  sink s = {NULL, 0, 0};
  int rc = lua_dump(L, writer, &s, 0);
  if (rc == 0) lua_pushlstring(L, s.p, s.len);
  free(s.p);
  if (rc != 0) return luaL_error(L, "out of memory");
  lua_pushglobaltable(L);
  return 2;
}

int lp_check_globals(const char *path, FILE *out) {
  lua_State *L = luaL_newstate();
  if (!L) return -1;
  luaL_openlibs(L);
  lua_pushcfunction(L, dump);
  lua_pushlightuserdata(L, (void *)path);
  if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
    lua_close(L);
    return -1;
  }
  size_t len;
  const char *bc = lua_tolstring(L, 1, &len);
  reader r = {NULL, NULL, 1};
  /* Header: signature, version 5.4, format 0, LUAC_DATA, sizes 4/8/8, and
   * the test integer and float. */
  static const unsigned char head[] = {0x1b, 'L',  'u',  'a',  0x54, 0, 0x19, 0x93,
                                       '\r', '\n', 0x1a, '\n', 4,    8, 8};
  lua_Integer i;
  lua_Number n;
  int ok = bc && len > sizeof head + 17 && memcmp(bc, head, sizeof head) == 0;
  if (ok) {
    memcpy(&i, bc + sizeof head, 8);
    memcpy(&n, bc + sizeof head + 8, 8);
    ok = i == 0x5678 && n == 370.5;
  }
  found f = {NULL, 0, 0, 0};
  if (ok) {
    /* Past the header and the main function's upvalue count. */
    r = (reader){(const unsigned char *)bc + sizeof head + 17, (const unsigned char *)bc + len, 0};
    function(&r, &f);
  }
  if (!ok || r.bad || f.bad) {
    fprintf(out, "%s: the globals could not be checked (unexpected bytecode)\n", path);
    free(f.v);
    lua_close(L);
    return 0;
  }
  int count = 0;
  if (f.n > 1) qsort(f.v, (size_t)f.n, sizeof *f.v, by_line);
  for (int j = 0; j < f.n; j++) {
    name *nm = &f.v[j];
    if (!nm->read || nm->written) continue;
    lua_pushlstring(L, nm->n.s, nm->n.len);
    int std = lua_rawget(L, 2) != LUA_TNIL;
    lua_pop(L, 1);
    if (std) continue;
    fprintf(out, "%s:%d: warning: global '%.*s' is read but never defined\n", path, nm->line,
            (int)nm->n.len, nm->n.s);
    count++;
  }
  free(f.v);
  lua_close(L);
  return count;
}

/*
 * libmap.c - what the task-side Lua layer (scripts/luapool.lua) needs from C
 * beyond the module's primitives (spawn.c, future.c, ...): spawning the
 * tasks of a map in one call, and errors that point at the user's line
 * rather than at the layer's.
 *
 * A map's items must start in list order. A worker runs its own queue
 * newest first (depth first, see sched.c), so spawning item by item would
 * run the last item first and the first result would come only after every
 * item had run. core._spawn_list makes the tasks in list order (their
 * records keep their place in the tree: records follow spawn order) and
 * then queues them on the worker's own queue last item first, so item 1 is
 * on top: the worker takes the items in order, and a get() on item 1 runs
 * it inline at once. Processes and other pools take tasks oldest first:
 * those are queued in list order.
 *
 * The results are collected by scripts/map.lua, which the host module's
 * pool:map runs too (lp_lib_map_collect).
 */
#include <stdarg.h>
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "vm.h"

#define BUFSET_MT "luapool.bufset"

extern const char lp_embedded_map[];
extern const size_t lp_embedded_map_len;

/* ---- errors at the user's line ---- */

/* The first frame outside luapool's Lua layer: the user's code that called
 * (directly, or through map and its kin) the failing function. Returns its
 * level, or -1 when that is a C function (such as the user's pcall), which
 * has no line: as with luaL_where, the message then has no position. */
static int layer_source(const char *source) {
  return strcmp(source, "=luapool.lua") == 0 || strcmp(source, "=map.lua") == 0;
}

static int is_layer(lua_State *L, int level) {
  lua_Debug ar;
  return lua_getstack(L, level, &ar) && lua_getinfo(L, "S", &ar) && layer_source(ar.source);
}

static int user_level(lua_State *L, lua_Debug *ar) {
  for (int level = 1; lua_getstack(L, level, ar); level++) {
    lua_getinfo(L, "Sl", ar);
    if (layer_source(ar->source)) continue;
    /* A pcall the layer made is part of the layer. */
    if (ar->currentline <= 0 && is_layer(L, level + 1)) continue;
    return ar->currentline > 0 ? level : -1;
  }
  return -1;
}

int lp_lib_error(lua_State *L, const char *fmt, ...) {
  lua_Debug ar;
  if (user_level(L, &ar) >= 0)
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
  else
    lua_pushliteral(L, "");
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

static int is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* In the call text at p (just past its '('), the bounds of argument argn
 * (1-based), split at commas outside brackets and quotes. 0 if absent. */
static int call_arg(const char *p, const char *end, int argn, const char **a, const char **b) {
  int depth = 0, n = 1;
  const char *start = p;
  for (; p < end; p++) {
    char c = *p;
    if (c == '"' || c == '\'') {
      for (p++; p < end && *p != c; p++)
        if (*p == '\\') p++;
    } else if (c == '(' || c == '{' || c == '[') {
      depth++;
    } else if ((c == ')' || c == '}' || c == ']') && depth > 0) {
      depth--;
    } else if ((c == ',' || c == ')') && depth == 0) {
      if (n == argn) {
        *a = start, *b = p;
        return 1;
      }
      if (c == ')') return 0;
      n++;
      start = p + 1;
    }
  }
  return 0;
}

/* What a variable `name` (len bytes) of the user's frame holds, pushed, and
 * how it is bound: "local", "upvalue" or "global". */
static const char *push_variable(lua_State *L, lua_Debug *ar, const char *name, size_t len) {
  const char *kind = NULL;
  const char *v;
  for (int i = 1; (v = lua_getlocal(L, ar, i)) != NULL; i++) {
    if (strlen(v) == len && memcmp(v, name, len) == 0) { /* the last one shadows the others */
      if (kind) lua_remove(L, -2);
      kind = "local";
    } else {
      lua_pop(L, 1);
    }
  }
  if (kind) return kind;
  lua_getinfo(L, "f", ar);
  for (int i = 1; (v = lua_getupvalue(L, -1, i)) != NULL; i++) {
    if (strlen(v) == len && memcmp(v, name, len) == 0) {
      lua_remove(L, -2);
      return "upvalue";
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushglobaltable(L);
  lua_pushlstring(L, name, len);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return "global";
}

/* Pushes " (global 'fecth' is not defined)" when the user's line passed a
 * plain variable that is nil as argument argn of the call it makes (to
 * spawn, map, ...); else "". The line is read from the script's source
 * (this is not the bytecode's own record of the variable, which Lua keeps
 * to itself): every candidate is checked to be nil as the call saw it. */
static void push_nil_hint(lua_State *L, int argn) {
  lua_Debug ar, callee;
  luapool *eng = lp_worker_of(L)->eng;
  int level = user_level(L, &ar);
  const char *fname = NULL;
  if (level >= 0 && lua_getstack(L, level - 1, &callee) && lua_getinfo(L, "n", &callee))
    fname = callee.name;
  if (level < 0 || !fname || !eng->script || !eng->chunkname ||
      strcmp(ar.source, eng->chunkname) != 0) {
    lua_pushliteral(L, "");
    return;
  }
  const char *line = eng->script, *end = eng->script + eng->script_len;
  for (int n = 1; n < ar.currentline && line < end; n++) {
    const char *nl = memchr(line, '\n', (size_t)(end - line));
    line = nl ? nl + 1 : end;
  }
  const char *eol = memchr(line, '\n', (size_t)(end - line));
  if (!eol) eol = end;
  size_t flen = strlen(fname);
  for (const char *p = line; p + flen < eol; p++) {
    if (memcmp(p, fname, flen) != 0 || (p > line && is_name_char(p[-1]))) continue;
    const char *q = p + flen;
    while (q < eol && (*q == ' ' || *q == '\t')) q++;
    const char *a, *b;
    if (q >= eol || *q != '(' || !call_arg(q + 1, eol, argn, &a, &b)) continue;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    int plain = b > a && !(*a >= '0' && *a <= '9');
    for (const char *c = a; c < b && plain; c++) plain = is_name_char(*c);
    if (!plain) continue;
    const char *kind = push_variable(L, &ar, a, (size_t)(b - a));
    int isnil = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!isnil) continue;
    if (strcmp(kind, "global") == 0)
      lua_pushfstring(L, " (global '%s' is not defined)", lua_pushlstring(L, a, (size_t)(b - a)));
    else
      lua_pushfstring(L, " (%s '%s' is nil)", kind, lua_pushlstring(L, a, (size_t)(b - a)));
    lua_remove(L, -2);
    return;
  }
  lua_pushliteral(L, "");
}

int lp_lib_fn_error(lua_State *L, const char *what, int idx, int argn, const char *err) {
  if (lua_isnoneornil(L, idx))
    push_nil_hint(L, argn);
  else
    lua_pushliteral(L, "");
  return lp_lib_error(L, "%s: argument %d: %s%s", what, argn, err, lua_tostring(L, -1));
}

/* ---- core._spawn_list ---- */

/* The packed arguments of a map's tasks, owned by a userdata until each
 * moves into its task: a Lua error meanwhile (a memory error) frees them. */
typedef struct bufset {
  lua_Integer n;
  lp_buf b[];
} bufset;

static int bufset_gc(lua_State *L) {
  bufset *bs = lua_touserdata(L, 1);
  for (lua_Integer i = 0; i < bs->n; i++) lp_buf_free(&bs->b[i]);
  bs->n = 0;
  return 0;
}

/* Pushes the arguments of item i of the list at index 4: the item, or
 * (star) its elements 1 .. item.n or #item. Returns how many. */
static int push_item(lua_State *L, lua_Integer i, int star) {
  lua_geti(L, 4, i);
  if (!star) return 1;
  int item = lua_gettop(L);
  lua_Integer n = lua_getfield(L, item, "n") == LUA_TNUMBER && lua_isinteger(L, -1)
                      ? lua_tointeger(L, -1)
                      : (lua_Integer)lua_rawlen(L, item);
  lua_pop(L, 1);
  if (n < 0 || n > 250 || !lua_checkstack(L, (int)n + 8))
    lp_lib_error(L, "luapool.starmap: item %I: too many arguments (%I)", i, n);
  for (lua_Integer j = 1; j <= n; j++) lua_geti(L, item, j);
  lua_remove(L, item);
  return (int)n;
}

/* Packs the arguments of task k (0-based) into b; on refusal raises an error
 * naming the item. */
static void pack_task(lua_State *L, const char *what, lua_Integer k, lua_Integer n, int star,
                      lua_Integer cs, lp_buf *b) {
  int top = lua_gettop(L);
  lua_Integer first = k * cs + 1, last = first + cs - 1 < n ? first + cs - 1 : n;
  char err[320];
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  int nargs;
  if (cs == 1) {
    nargs = push_item(L, first, star);
  } else { /* luapool._chunk(fn, star, items) */
    lua_pushvalue(L, 3);
    lua_pushboolean(L, star);
    lua_createtable(L, (int)(last - first + 1), 0);
    for (lua_Integer i = first; i <= last; i++) {
      lua_geti(L, 4, i);
      lua_rawseti(L, -2, i - first + 1);
    }
    nargs = 3;
  }
  if (lp_pack_values(L, top + 1, nargs, b, &ctx, err, sizeof err) == 0) {
    lua_settop(L, top);
    return;
  }
  /* Name the item that was refused: pack a chunk's items one by one. */
  lua_Integer bad = first;
  for (lua_Integer i = first; cs > 1 && i <= last; i++) {
    lua_settop(L, top);
    lp_buf one;
    lp_buf_init(&one);
    int rc = lp_pack_values(L, top + 1, push_item(L, i, star), &one, &ctx, err, sizeof err);
    lp_buf_free(&one);
    if (rc != 0) {
      bad = i;
      break;
    }
  }
  lua_settop(L, top);
  lp_lib_error(L, "%s: item %I: %s", what, bad, err);
}

/* core._spawn_list(what, opts, fn, list, n, star, chunksize): spawns the
 * tasks of a map (one per item, or luapool._chunk per chunk, named as the
 * call: "luapool.map(fetch)") and returns their futures in list order; in a
 * sequential run, where the Lua layer spawns them one by one (each runs at
 * its spawn) once this has checked them, nil and the task name to spawn. */
int lp_lib_spawn_list(lua_State *L) {
  const char *what = luaL_checkstring(L, 1);
  lp_task *self = lp_lib_running(L, what);
  luapool *eng = lp_worker_of(L)->eng;
  spawn_opts o = {self->pool, self->priority, eng->cfg.task_timeout, eng->cfg.retries};
  lp_spawn_options(L, 2, what, &o);
  char err[320];
  int fn = lp_vm_fn_id(L, 3, err, sizeof err);
  if (fn < 0) return lp_lib_fn_error(L, what, 3, 1, err);
  lua_Integer n = luaL_checkinteger(L, 5);
  int star = lua_toboolean(L, 6);
  lua_Integer cs = luaL_checkinteger(L, 7);
  lua_settop(L, 7);
  if (cs > 1) { /* luapool._chunk, named as the call: see vm.c push_by_name */
    lua_pushfstring(L, "%s(%s)", what, lp_names_get(&eng->names, fn));
    fn = lp_vm_fn_id(L, -1, err, sizeof err);
    lua_pop(L, 1);
    if (fn < 0) return luaL_error(L, "%s: %s", what, err);
  }
  lua_Integer ntasks = n > 0 ? (n - 1) / cs + 1 : 0;
  if ((size_t)ntasks > (SIZE_MAX - sizeof(bufset)) / sizeof(lp_buf) / 2)
    return luaL_error(L, "%s: out of memory", what);
  bufset *bs = lua_newuserdatauv(L, sizeof *bs + (size_t)ntasks * sizeof(lp_buf), 0); /* 8 */
  bs->n = 0;
  luaL_setmetatable(L, BUFSET_MT);
  for (lua_Integer k = 0; k < ntasks; k++) {
    lp_buf_init(&bs->b[k]);
    bs->n = k + 1;
    pack_task(L, what, k, n, star, cs, &bs->b[k]);
  }
  if (eng->inline_mode) { /* nil, and the name the chunks are spawned under */
    lua_pushnil(L);
    lua_pushstring(L, lp_names_get(&eng->names, fn));
    return 2;
  }
  lua_createtable(L, (int)ntasks, 0); /* 9: the futures */
  lp_task **ts = lua_newuserdatauv(L, (size_t)ntasks * sizeof *ts + 1, 0);
  lua_Integer made = 0;
  for (; made < ntasks; made++) {
    lp_task *t = lp_spawn_new(L, self, fn, &o, &bs->b[made]);
    if (!t) break;
    lua_rawseti(L, 9, made + 1);
    ts[made] = t;
  }
  int oom = made < ntasks;
  int dest = made ? lp_spawn_dest(L, ts[0]) : LP_SPAWN_OWN;
  if (dest == LP_SPAWN_OWN) { /* newest on top runs first: the first item goes on last */
    for (lua_Integer k = made - 1; k >= 0; k--) oom |= lp_spawn_queue(L, ts[k], dest) != 0;
  } else {
    for (lua_Integer k = 0; k < made; k++) oom |= lp_spawn_queue(L, ts[k], dest) != 0;
  }
  if (oom) return luaL_error(L, "%s: out of memory", what);
  lua_pushvalue(L, 9);
  return 1;
}

void lp_lib_map_open(lua_State *L) {
  luaL_newmetatable(L, BUFSET_MT);
  lua_pushcfunction(L, bufset_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

void lp_lib_map_collect(lua_State *L) {
  if (luaL_loadbufferx(L, lp_embedded_map, lp_embedded_map_len, "=map.lua", "t") != LUA_OK)
    lua_error(L);
  lua_call(L, 0, 1);
}

/*
 * vm.c - one worker's Lua state.
 *
 * Each worker owns a lua_State with a counting allocator (so a memory limit
 * turns into Lua's own memory error, never a crash), the standard
 * libraries, the task-side `luapool` module in package.preload, and the
 * user's script run once at its top level. Task functions are named by
 * their global (dotted) names; this file turns names and function values
 * into the engine-wide name ids and back, caching both ways in the state.
 */
#include "vm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "engine.h"
#include "pool.h"
#include "spin.h"

/* Caches, in the registry: w->fn_by_id_ref (id -> function),
 * w->id_by_name_ref (name string or function value -> id), and: */
#define NAME_OF_FN "luapool.name_of_fn" /* function -> name, built by scanning globals */

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  lp_worker *w = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    /* Another thread setting the cancel hook walks the running
     * coroutine's call frames (lp_pool_stop_lua): none is freed (the
     * collector shrinks a coroutine's frame list) until it is done. */
    while (atomic_load_explicit(&w->hooking, memory_order_acquire)) lp_cpu_relax();
    free(ptr);
    w->mem_used -= old;
    return NULL;
  }
  /* Only where Lua's memory error is caught: the engine's own calls
   * between tasks (a coroutine, a failure message) are not protected. */
  if (w->mem_limit && w->limit_on && nsize > old && w->mem_used + (nsize - old) > w->mem_limit)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  w->mem_used = w->mem_used - old + nsize;
  return p;
}

int lp_vm_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Finds the last "\nstack traceback:" in s: the one luaL_traceback added
 * (a child's re-raised error carries its own earlier in the message). */
static const char *last_traceback(const char *s) {
  const char *found = NULL;
  for (const char *p = s; (p = strstr(p, "\nstack traceback:")); p++) found = p;
  return found;
}

int lp_vm_traceback_upto(lua_State *L, int keep) {
  lp_vm_traceback(L);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  const char *tb = s ? last_traceback(s) : NULL;
  if (!tb || keep <= 0) return 1;
  /* One line per level from level 1 (and a "(...tail calls...)" line after
   * a level that made them); a long traceback has a "... (skipping N
   * levels)" line between its first and last levels. */
  static const char skipping[] = "\n\t...\t(skipping ";
  int level = 0;
  for (const char *q = strchr(tb + 1, '\n'); q; q = strchr(q + 1, '\n')) {
    if (strncmp(q, skipping, sizeof skipping - 1) == 0) {
      int n = atoi(q + sizeof skipping - 1) + 1; /* it says one fewer than it skips */
      if (level + n < keep) {
        level += n;
        continue;
      }
      lua_pushlstring(L, s, (size_t)(q - s));
      if (keep > level)
        lua_pushfstring(L, "%s%d levels)", skipping, keep - level);
      else
        lua_pushliteral(L, "");
      lua_concat(L, 2);
      return 1;
    }
    if (strncmp(q, "\n\t(...tail calls...)", 20) == 0) continue; /* no level of its own */
    if (++level > keep) {
      lua_pushlstring(L, s, (size_t)(q - s));
      return 1;
    }
  }
  return 1;
}

/* os.exit in a thread worker would end the whole run, every other task
 * and the host program with it: it fails the task instead. In a worker
 * process the real os.exit stays: the engine contains it. */
static int l_no_exit(lua_State *L) {
  return luaL_error(L,
                    "os.exit is not available in a task running on a worker thread (it would "
                    "end the whole run); return or raise an error instead, or run with "
                    "--processes");
}

lua_State *lp_vm_new(lp_worker *w) {
  lua_State *L = lua_newstate(counting_alloc, w);
  if (!L) return NULL;
  *(lp_worker **)lua_getextraspace(L) = w;
  luaL_openlibs(L);
  /* Generational: futures die young, and minor collections free their task
   * records promptly. LUAPOOL_GC_STRESS=1 instead collects all the time, to
   * shake out objects used after the collector could have freed them. */
  if (getenv("LUAPOOL_GC_STRESS"))
    lua_gc(L, LUA_GCINC, 1, 1000);
  else
    lua_gc(L, LUA_GCGEN, 0, 0);
  if (!w->eng->up || !w->eng->up->keeps_exit) {
    lua_getglobal(L, "os");
    lua_pushcfunction(L, l_no_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  if (w->eng->open_lib) {
    lua_pushcfunction(L, w->eng->open_lib);
    lua_setfield(L, -2, "luapool");
  }
  /* The host's own modules: `require "NAME"` in every worker. */
  for (int i = 0; i < w->eng->nmodules; i++) {
    lua_pushcfunction(L, w->eng->modules[i].open);
    lua_setfield(L, -2, w->eng->modules[i].name);
  }
  lua_pop(L, 2);
  /* Loaded now, not at the script's first require: print inside a task is
   * a record whether the script requires luapool or not (in a worker
   * process on another machine, its stdout is nobody's). */
  if (w->eng->open_lib) {
    luaL_requiref(L, "luapool", w->eng->open_lib, 0);
    lua_pop(L, 1);
  }
  lua_newtable(L);
  w->fn_by_id_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  w->id_by_name_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return L;
}

/* A copy of the whole message: a load error can be as long as the script
 * makes it (an error() string, a syntax error near a long token). */
static void set_err(char **err, const char *msg) {
  free(*err);
  *err = strdup(msg ? msg : "(no message)");
}

int lp_vm_load(lua_State *L, const char *chunk, size_t len, const char *chunkname, char **err) {
  lp_worker *w = lp_worker_of(L);
  int top = lua_gettop(L);
  lua_pushcfunction(L, lp_vm_traceback);
  w->limit_on = 1;
  int rc = luaL_loadbufferx(L, chunk, len, chunkname, "t") != LUA_OK ||
           lua_pcall(L, 0, 0, top + 1) != LUA_OK;
  w->limit_on = 0;
  if (rc) set_err(err, lua_tostring(L, -1));
  lua_settop(L, top);
  return rc ? -1 : 0;
}

int lp_vm_check(const char *chunk, size_t len, const char *chunkname, char **err) {
  if (len > 0 && chunk[0] == LUA_SIGNATURE[0]) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: precompiled (binary) chunks are not accepted; give the source",
             chunkname[0] == '@' || chunkname[0] == '=' ? chunkname + 1 : chunkname);
    set_err(err, msg);
    return -1;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    set_err(err, "out of memory");
    return -1;
  }
  int rc = 0;
  if (luaL_loadbufferx(L, chunk, len, chunkname, "t") != LUA_OK) {
    set_err(err, lua_tostring(L, -1));
    rc = -1;
  }
  lua_close(L);
  return rc;
}

/* Pushes the value a dotted name leads to from the globals (or from the
 * luapool module for "luapool." names), or nil. Never raises. */
static void push_by_name(lua_State *L, const char *name, size_t len) {
  const char *p = name, *end = name + len;
  if (len > 8 && memcmp(name, "luapool.", 8) == 0) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "luapool");
    lua_remove(L, -2);
    p += 8;
    /* A chunk of a map is named as the call that made it, such as
     * "luapool.map(fetch)", so that failures, traces and stats show what
     * the script wrote; every such name runs luapool._chunk. */
    if (memchr(p, '(', (size_t)(end - p))) {
      if (lua_istable(L, -1))
        lua_getfield(L, -1, "_chunk");
      else
        lua_pushnil(L);
      lua_remove(L, -2);
      return;
    }
  } else {
    lua_pushglobaltable(L);
  }
  while (p <= end) {
    const char *dot = memchr(p, '.', (size_t)(end - p));
    size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
    if (!lua_istable(L, -1) || n == 0) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    }
    lua_pushlstring(L, p, n);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (!dot) break;
    p = dot + 1;
  }
}

int lp_vm_push_fn(lua_State *L, int fn) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, lp_worker_of(L)->fn_by_id_ref);
  if (lua_rawgeti(L, -1, fn) == LUA_TFUNCTION) {
    lua_remove(L, -2);
    return 0;
  }
  lua_pop(L, 1);
  lp_worker *w = lp_worker_of(L);
  const char *name = lp_names_get(&w->eng->names, fn);
  push_by_name(L, name, strlen(name));
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    lua_pop(L, 2);
    return -1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, fn);
  lua_remove(L, -2);
  return 0;
}

/* Whether the table at the top was already walked at least `depth` deep;
 * if not, records that it now is. `seen` maps tables to the depth walked. */
static int walked(lua_State *L, int seen, int depth) {
  lua_pushvalue(L, -1);
  int done = lua_rawget(L, seen) == LUA_TNUMBER && lua_tointeger(L, -1) >= depth;
  lua_pop(L, 1);
  if (!done) {
    lua_pushvalue(L, -1);
    lua_pushinteger(L, depth);
    lua_rawset(L, seen);
  }
  return done;
}

/* Walks the globals (two levels of tables deep) and the luapool module,
 * recording the dotted name of every function. A table met again (under
 * another name) is not walked again unless deeper: its functions already
 * have their first name, and tables that refer to one another would
 * otherwise cost the cube of their number. */
static void scan_tables(lua_State *L, int map, int seen, const char *prefix, int depth) {
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2);
      char name[256];
      snprintf(name, sizeof name, "%s%s", prefix, k);
      if (lua_type(L, -1) == LUA_TFUNCTION) {
        lua_pushvalue(L, -1);
        lua_rawget(L, map);
        int known = !lua_isnil(L, -1);
        lua_pop(L, 1);
        /* A shorter (shallower) name wins: it was met first. */
        if (!known) {
          lua_pushvalue(L, -1);
          lua_pushstring(L, name);
          lua_rawset(L, map);
        }
      } else if (lua_type(L, -1) == LUA_TTABLE && depth > 0 && strcmp(k, "_G") != 0 &&
                 strcmp(k, "package") != 0 && strcmp(k, "luapool") != 0) {
        size_t n = strlen(name);
        if (n + 2 < sizeof name && !walked(L, seen, depth - 1)) {
          name[n] = '.';
          name[n + 1] = '\0';
          scan_tables(L, map, seen, name, depth - 1);
        }
      }
    }
    lua_pop(L, 1);
  }
}

static void build_name_map(lua_State *L) {
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_newtable(L);
  int seen = lua_gettop(L);
  lua_pushglobaltable(L);
  walked(L, seen, 2);
  scan_tables(L, map, seen, "", 2);
  lua_pop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "luapool");
  if (lua_istable(L, -1)) scan_tables(L, map, seen, "luapool.", 0);
  lua_pop(L, 3); /* the module, the loaded table, seen */
  lua_setfield(L, LUA_REGISTRYINDEX, NAME_OF_FN);
}

/* Pushes the dotted name of the function at idx, or nil. */
static void push_name_of(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  for (int attempt = 0; attempt < 2; attempt++) {
    if (attempt == 1 || lua_getfield(L, LUA_REGISTRYINDEX, NAME_OF_FN) != LUA_TTABLE) {
      if (attempt == 0) lua_pop(L, 1);
      build_name_map(L);
      lua_getfield(L, LUA_REGISTRYINDEX, NAME_OF_FN);
    }
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (!lua_isnil(L, -1)) return;
    lua_pop(L, 1);
    /* Not found: globals may have been defined since the last scan. */
  }
  lua_pushnil(L);
}

/* The id cached for the value at idx (a function or a name), or -1. */
static int cached_id(lp_worker *w, lua_State *L, int idx) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->id_by_name_ref);
  lua_pushvalue(L, idx);
  int id = lua_rawget(L, -2) == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : -1;
  lua_pop(L, 2);
  return id;
}

/* Interns name and caches its id for the value at idx: the id, or -1. */
static int intern_id(lp_worker *w, lua_State *L, int idx, const char *name, size_t len, char *err,
                     size_t errlen) {
  int id = lp_names_intern(&w->eng->names, name, len);
  if (id < 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->id_by_name_ref);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, id);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return id;
}

int lp_vm_fn_id(lua_State *L, int idx, char *err, size_t errlen) {
  lp_worker *w = lp_worker_of(L);
  idx = lua_absindex(L, idx);
  int t = lua_type(L, idx);
  if (t != LUA_TFUNCTION && t != LUA_TSTRING) {
    snprintf(err, errlen, "task function expected (a name or a function), got %s",
             lua_typename(L, t));
    return -1;
  }
  int id = cached_id(w, L, idx); /* function values are cached too */
  if (id >= 0) return id;
  if (t == LUA_TFUNCTION) {
    push_name_of(L, idx);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      snprintf(err, errlen,
               "the function is not a task function (task functions are global "
               "functions of the script, or fields of global tables)");
      return -1;
    }
    size_t len;
    const char *name = lua_tolstring(L, -1, &len);
    id = intern_id(w, L, idx, name, len, err, errlen);
    lua_pop(L, 1);
    return id;
  }
  size_t len;
  const char *name = lua_tolstring(L, idx, &len);
  push_by_name(L, name, len);
  int ok = lua_type(L, -1) == LUA_TFUNCTION;
  lua_pop(L, 1);
  if (!ok) {
    snprintf(err, errlen, "no task function named '%.200s' in the script", name);
    return -1;
  }
  return intern_id(w, L, idx, name, len, err, errlen);
}

/* Codec callbacks: a function value travels as its global name. */
static const char *fn_name_cb(lua_State *L, int idx, void *ud) {
  (void)ud;
  char err[64];
  int id = lp_vm_fn_id(L, idx, err, sizeof err);
  if (id < 0) return NULL;
  return lp_names_get(&lp_worker_of(L)->eng->names, id);
}

static int fn_push_cb(lua_State *L, const char *name, size_t len, void *ud) {
  (void)ud;
  push_by_name(L, name, len);
  if (lua_type(L, -1) == LUA_TFUNCTION) return 0;
  lua_pop(L, 1);
  return -1;
}

lp_pack_ctx lp_vm_pack_ctx(lua_State *L, int argbase) {
  (void)L;
  lp_pack_ctx c = {fn_name_cb, fn_push_cb, NULL, argbase};
  return c;
}

int lp_vm_function_names(lua_State *L, char ***names, int *n) {
  *names = NULL;
  *n = 0;
  build_name_map(L);
  lua_getfield(L, LUA_REGISTRYINDEX, NAME_OF_FN);
  int count = 0, cap = 0;
  char **out = NULL;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    const char *name = lua_tostring(L, -1);
    /* The standard libraries and the luapool module are not the script's. */
    int lib = strncmp(name, "luapool.", 8) == 0 || strchr(name, '.') != NULL;
    if (lib) {
      static const char *libs[] = {"string.",    "table.", "math.",  "io.",   "os.",
                                   "coroutine.", "utf8.",  "debug.", "lpeg.", NULL};
      lib = 0;
      for (int i = 0; libs[i]; i++)
        if (strncmp(name, libs[i], strlen(libs[i])) == 0 || strncmp(name, "luapool.", 8) == 0)
          lib = 1;
    }
    lua_getglobal(L, name);
    lua_CFunction cf = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (!lib && !cf) {
      if (count == cap) {
        cap = cap ? cap * 2 : 16;
        char **g = realloc(out, sizeof *g * (size_t)cap);
        if (!g) goto oom;
        out = g;
      }
      if (!(out[count] = strdup(name))) goto oom;
      count++;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  *names = out;
  *n = count;
  return 0;
oom:
  for (int i = 0; i < count; i++) free(out[i]);
  free(out);
  lua_settop(L, 0);
  return -1;
}

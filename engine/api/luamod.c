/*
 * luamod.c - the engine as a Lua C module for a plain Lua 5.4 interpreter:
 * the module's table and its pool (lp.open, pool:spawn, map, wait, ...).
 *
 *   local lp = require "luapool"     -- from lua5.4, not inside a task
 *   local pool = lp.open{workers = 4, script = "tasks.lua"}
 *   print(pool:spawn("fib", 20):get())
 *   for rec in pool:records() do print(rec.text) end
 *   pool:close()
 *
 * Inside worker states the name "luapool" is the task-side module (lib.c,
 * preloaded by vm.c); this file is a separate shared object (luapool.so in
 * Lua's cpath) that only the host's interpreter loads. The host's state
 * never meets a worker's: arguments and results cross packed (pack.c), and
 * the engine's callbacks, which run on the host thread inside a wait, only
 * copy records and failure reports into C queues that the Lua side drains.
 * No Lua code runs inside a callback, so no Lua error can unwind through
 * the engine. Futures: luamod_future.c; records: luamod_records.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lib.h"
#include "luamod.h"

int luaopen_luapool(lua_State *L);

/* ---- misuse (luamod.h) ---- */

int lp_luamod_arg_error(lua_State *L, const char *fname, int idx, const char *expected) {
  return luaL_error(L, "%s: argument %d: %s expected, got %s", fname, idx - 1, expected,
                    luaL_typename(L, idx));
}

pool *lp_luamod_pool(lua_State *L, const char *fname) {
  pool *p = luaL_testudata(L, 1, POOL_MT);
  if (!p)
    luaL_error(L, "%s: called without a pool (write %s(...), with a colon); got %s", fname, fname,
               luaL_typename(L, 1));
  return p;
}

pool *lp_luamod_check_pool(lua_State *L, const char *fname) {
  pool *p = lp_luamod_pool(L, fname);
  if (!p->lp) luaL_error(L, "luapool: the pool is closed");
  return p;
}

/* The name of a task function at index idx. */
static const char *check_name(lua_State *L, int idx, const char *fname) {
  if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
  if (lua_type(L, idx) == LUA_TFUNCTION)
    luaL_error(L,
               "%s: argument %d: task name (string) expected, got function (a host function "
               "cannot run in a worker: pass the name of a function of the script)",
               fname, idx - 1);
  return lp_luamod_arg_error(L, fname, idx, "task name (string)"), NULL;
}

void lp_luamod_check_keys(lua_State *L, int t, const char *fname, const char *const *known) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int ok = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (int i = 0; known[i] && !ok; i++) ok = strcmp(lua_tostring(L, -2), known[i]) == 0;
    if (!ok) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; known[i]; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, known[i]);
      }
      luaL_pushresult(&b);
      const char *list = lua_tostring(L, -1);
      const char *key = luaL_tolstring(L, -3, NULL);
      luaL_error(L, "%s: unknown option '%s' (known: %s)", fname, key, list);
    }
    lua_pop(L, 1);
  }
}

/* ---- the pool ---- */

/* Closes the engine; failures reported and never collected by wait() go
 * to stderr, as the luapool binary writes them. */
static void close_pool(pool *p) {
  if (p->lp) {
    luapool_close(p->lp);
    p->lp = NULL;
  }
  if (p->failures.len) {
    fprintf(stderr, "%.*s\n", (int)p->failures.len, p->failures.data);
    lp_buf_reset(&p->failures);
  }
}

static int pool_gc(lua_State *L) {
  pool *p = lp_luamod_pool(L, "pool:__gc");
  close_pool(p);
  lp_luamod_free_records(p);
  lp_buf_free(&p->failures);
  return 0;
}

static int pool_close(lua_State *L) {
  pool *p = lp_luamod_pool(L, "pool:close");
  close_pool(p);
  return 0;
}

static double opt_number(lua_State *L, int t, const char *fname, const char *k, double dflt) {
  double v = dflt;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "%s: option '%s' must be a number, not %s", fname, k, luaL_typename(L, -1));
    v = lua_tonumber(L, -1);
    if (v != v) luaL_error(L, "%s: option '%s' is NaN", fname, k);
  }
  lua_pop(L, 1);
  return v;
}

static int opt_int(lua_State *L, int t, const char *fname, const char *k, int dflt) {
  double v = opt_number(L, t, fname, k, dflt);
  if (!(v >= 0 && v <= 1e6) || v != (int)v)
    luaL_error(L, "%s: option '%s' must be a whole number >= 0", fname, k);
  return (int)v;
}

static double opt_field_number(lua_State *L, int t, const char *k, double dflt) {
  return opt_number(L, t, "luapool.open", k, dflt);
}

static int opt_field_int(lua_State *L, int t, const char *k, int dflt) {
  return opt_int(L, t, "luapool.open", k, dflt);
}

/* The spawn options in the table at index t (as a task's luapool.spawn
 * takes them) into *o. o->pool points into the table, which the caller's
 * stack keeps. */
static void read_task_opts(lua_State *L, int t, const char *fname, luapool_task_opts *o) {
  static const char *const known[] = {"priority", "pool", "timeout", "retries", NULL};
  lp_luamod_check_keys(L, t, fname, known);
  luapool_task_opts_init(o);
  o->priority = opt_number(L, t, fname, "priority", 0);
  if (lua_getfield(L, t, "timeout") != LUA_TNIL) {
    o->timeout = opt_number(L, t, fname, "timeout", 0);
    if (o->timeout < 0) luaL_error(L, "%s: option 'timeout' must not be negative", fname);
  }
  if (lua_getfield(L, t, "retries") != LUA_TNIL) o->retries = opt_int(L, t, fname, "retries", 0);
  if (lua_getfield(L, t, "pool") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "%s: option 'pool' must be the name of a pool, not %s", fname,
                 luaL_typename(L, -1));
    o->pool = lua_tostring(L, -1);
  }
  lua_pop(L, 3);
}

/* lp.open{workers =, processes =, threads =, pools =, script = | source =,
 * order =, memory_limit =, task_timeout =, retries =, hold =, broker =,
 * lease =} -> pool, or nil, message when the script cannot be loaded. */
static int l_open(lua_State *L) {
  static const char *const known[] = {
      "script",       "source",       "workers", "processes", "threads", "pools", "order",
      "memory_limit", "task_timeout", "retries", "hold",      "broker",  "lease", NULL};
  if (!lua_istable(L, 1))
    return luaL_error(L, "luapool.open: argument 1: options table expected, got %s",
                      luaL_typename(L, 1));
  lp_luamod_check_keys(L, 1, "luapool.open", known);
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = opt_field_int(L, 1, "workers", cfg.workers);
  cfg.processes = opt_field_int(L, 1, "processes", 0);
  cfg.threads = opt_field_int(L, 1, "threads", 0);
  double limit = opt_field_number(L, 1, "memory_limit", 0);
  cfg.task_timeout = opt_field_number(L, 1, "task_timeout", 0);
  if (!(limit >= 0 && limit < 0x1p62) || !(cfg.task_timeout >= 0))
    return luaL_error(L, "luapool.open: memory_limit and task_timeout must be >= 0");
  cfg.memory_limit = (size_t)limit;
  double hold = opt_field_number(L, 1, "hold", 0);
  if (!(hold >= 0 && hold < 0x1p62))
    return luaL_error(L, "luapool.open: hold must be >= 0 (bytes; 0: the default)");
  cfg.hold = (size_t)hold;
  cfg.retries = opt_field_int(L, 1, "retries", 0);
  /* broker = "redis://...": the run goes through Redis (the string stays
   * on the stack, below the pool, while the engine copies it). */
  if (lua_getfield(L, 1, "broker") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "luapool.open: option 'broker' must be a URL, redis://HOST:PORT");
    cfg.broker = lua_tostring(L, -1);
  }
  cfg.lease = opt_field_number(L, 1, "lease", 0);
  if (!(cfg.lease >= 0) || (cfg.lease > 0 && !cfg.broker))
    return luaL_error(L, "luapool.open: lease is seconds (>= 0) and needs a broker");
  static const char *const orders[] = {"tree", "priority", "completion", NULL};
  lua_getfield(L, 1, "order");
  if (!lua_isnil(L, -1)) {
    const char *o = lua_tostring(L, -1);
    int i = 0;
    while (orders[i] && (!o || strcmp(o, orders[i]) != 0)) i++;
    if (!orders[i])
      return luaL_error(L, "luapool.open: order must be tree, priority or completion");
    cfg.order = i;
  }
  lua_pop(L, 1);
  const char *script = NULL, *source = NULL;
  size_t source_len = 0;
  if (lua_getfield(L, 1, "script") != LUA_TNIL) {
    script = lua_tostring(L, -1);
    if (!script || lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "luapool.open: option 'script' must be a file name");
  }
  if (lua_getfield(L, 1, "source") != LUA_TNIL) {
    source = lua_tolstring(L, -1, &source_len);
    if (!source || lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "luapool.open: option 'source' must be a string");
  }
  if (!script == !source)
    return luaL_error(L,
                      "luapool.open: give the tasks as 'script' (a file) or 'source' (a string)");

  pool *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  lp_buf_init(&p->failures);
  p->hold = cfg.hold ? cfg.hold : LP_HOLD_DEFAULT;
  luaL_setmetatable(L, POOL_MT);
  cfg.on_record = lp_luamod_on_record;
  cfg.on_failure = lp_luamod_on_failure;
  cfg.ud = p;
  int rc = luapool_open(&cfg, &p->lp);
  if (rc != 0) return luaL_error(L, "luapool.open: %s", luapool_strerror(rc));
  /* pools = {NAME = "threads:N" | "processes:N[xT]", ...}: named pools that
   * tasks reach with the spawn option pool = NAME. */
  if (lua_getfield(L, 1, "pools") != LUA_TNIL) {
    if (!lua_istable(L, -1)) return luaL_error(L, "luapool.open: option 'pools' must be a table");
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "luapool.open: pools maps names to \"threads:N\" or \"processes:N\"");
      rc = luapool_add_pool(p->lp, lua_tostring(L, -2), lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    if (rc != 0) return luaL_error(L, "luapool.open: %s", luapool_errmsg(p->lp));
  }
  lua_pop(L, 1);
  rc = script ? luapool_load_file(p->lp, script)
              : luapool_load_string(p->lp, source, source_len, "=source");
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, luapool_errmsg(p->lp));
    close_pool(p);
    return 2;
  }
  return 1;
}

/* ---- spawning ---- */

/* pool:spawn([opts,] name, ...) -> future; opts as a task's spawn takes
 * them: priority, timeout, retries, pool. */
static int pool_spawn(lua_State *L) {
  pool *p = lp_luamod_check_pool(L, "pool:spawn");
  int fi = 2;
  luapool_task_opts opts;
  luapool_task_opts_init(&opts);
  if (lua_istable(L, 2)) {
    read_task_opts(L, 2, "pool:spawn", &opts);
    fi = 3;
  }
  const char *name = check_name(L, fi, "pool:spawn");
  int n = lua_gettop(L) - fi;
  lp_luamod_spawn(L, p, "pool:spawn", name, fi + 1, n, &opts, fi);
  return 1;
}

/* pool:map's get: the values of the future at 1 once its task has
 * finished, or raises the task's error text. */
static int map_get(lua_State *L) {
  hfuture *h = lua_touserdata(L, 1);
  if (luapool_future_wait(h->f, -1) == 0) return lp_luamod_get_values(L, 1, -1);
  size_t len;
  const char *msg = luapool_future_text(h->f, &len);
  if (msg)
    lua_pushlstring(L, msg, len);
  else
    lua_pushliteral(L, "task failed");
  return lua_error(L);
}

/* pool:map's drop: waits for every future of the list at 1 to finish, so
 * a second failure is seen, not reported as unawaited. */
static int map_drop(lua_State *L) {
  lua_Integer n = luaL_len(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    luapool_future_wait(((hfuture *)lua_touserdata(L, -1))->f, -1);
    lua_pop(L, 1);
  }
  return 0;
}

/* pool:map(name, list [, opts]) -> the first result of name(item) for each
 * item, in list order; raises the first error in list order, once every
 * task has finished. The results are collected by the code the task side's
 * map uses, scripts/map.lua (upvalue 1). */
static int pool_map(lua_State *L) {
  pool *p = lp_luamod_check_pool(L, "pool:map");
  const char *name = check_name(L, 2, "pool:map");
  if (!lua_istable(L, 3)) lp_luamod_arg_error(L, "pool:map", 3, "list (table)");
  luapool_task_opts opts;
  luapool_task_opts_init(&opts);
  if (!lua_isnoneornil(L, 4)) {
    if (!lua_istable(L, 4)) lp_luamod_arg_error(L, "pool:map", 4, "options (table)");
    read_task_opts(L, 4, "pool:map", &opts);
  }
  lua_Integer n = luaL_len(L, 3);
  /* The options table at 4 keeps opts.pool alive while the tasks go. */
  lua_settop(L, 4);
  lua_pushvalue(L, lua_upvalueindex(1));             /* 5: collect */
  lua_createtable(L, (int)(n < 1 << 20 ? n : 0), 0); /* 6: the futures */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 3, i); /* 7 */
    lp_luamod_spawn(L, p, "pool:map", name, 7, 1, &opts, 2);
    lua_seti(L, 6, i);
    lua_pop(L, 1);
  }
  lua_pushinteger(L, 1);
  lua_pushinteger(L, n);
  lua_pushcfunction(L, map_get);
  lua_pushcfunction(L, map_drop);
  lua_call(L, 5, 1);
  return 1;
}

/* ---- waiting ---- */

/* pool:wait([timeout]) -> true once every task has finished; false,
 * "timeout"; or nil, message when a task failed without being awaited (the
 * message holds every such report since the last wait). A failure counts as
 * unawaited once its future has been collected without get(). */
static int pool_wait(lua_State *L) {
  pool *p = lp_luamod_check_pool(L, "pool:wait");
  double timeout = lp_luamod_timeout(L, 2, "pool:wait");
  /* wait(0) polls, as records() does: it takes the bound's worth of
   * records at most. A wait that blocks takes all: what it waits for may
   * itself wait for room. */
  p->following = timeout == 0;
  int rc = luapool_wait(p->lp, timeout);
  if (rc != LUAPOOL_ETIMEDOUT) {
    /* A future nobody holds any more can never be awaited: collecting it
     * now reports its task's failure here rather than at some later GC. */
    lua_gc(L, LUA_GCCOLLECT);
    int again = luapool_wait(p->lp, 0);
    if (rc == 0) rc = again;
  }
  p->following = 0;
  if (p->failures.len) {
    lua_pushnil(L);
    lua_pushlstring(L, p->failures.data, p->failures.len);
    lp_buf_reset(&p->failures);
    return 2;
  }
  if (rc == 0 || rc == LUAPOOL_ETASKFAIL) { /* reported by an earlier wait */
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == LUAPOOL_ETIMEDOUT) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  lua_pushnil(L);
  lua_pushstring(L, luapool_errmsg(p->lp)[0] ? luapool_errmsg(p->lp) : luapool_strerror(rc));
  return 2;
}

static int pool_cancel(lua_State *L) {
  luapool_cancel(lp_luamod_check_pool(L, "pool:cancel")->lp);
  return 0;
}

static int pool_stats(lua_State *L) {
  pool *p = lp_luamod_check_pool(L, "pool:stats");
  luapool_stats st;
  luapool_get_stats(p->lp, &st);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)st.tasks_run);
  lua_setfield(L, -2, "tasks_run");
  lua_pushinteger(L, (lua_Integer)st.tasks_failed);
  lua_setfield(L, -2, "tasks_failed");
  lua_pushinteger(L, (lua_Integer)st.records);
  lua_setfield(L, -2, "records");
  lua_pushinteger(L, st.max_depth);
  lua_setfield(L, -2, "max_depth");
  return 1;
}

static int pool_tostring(lua_State *L) {
  pool *p = luaL_checkudata(L, 1, POOL_MT);
  lua_pushfstring(L, "luapool pool (%s)", p->lp ? "open" : "closed");
  return 1;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_luapool(lua_State *L) {
  static const luaL_Reg pool_methods[] = {{"spawn", pool_spawn},          {"wait", pool_wait},
                                          {"records", lp_luamod_records}, {"cancel", pool_cancel},
                                          {"stats", pool_stats},          {"close", pool_close},
                                          {"__close", pool_close},        {"__gc", pool_gc},
                                          {"__tostring", pool_tostring},  {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"open", l_open}, {"as_completed", lp_luamod_as_completed}, {NULL, NULL}};
  new_class(L, POOL_MT, pool_methods);
  luaL_getmetatable(L, POOL_MT);
  lp_lib_map_collect(L);
  lua_pushcclosure(L, pool_map, 1);
  lua_setfield(L, -2, "map");
  lua_pop(L, 1);
  new_class(L, FUTURE_MT, lp_luamod_future_methods);
  luaL_newlib(L, funcs);
  lua_pushliteral(L, LUAPOOL_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

/*
 * luamod.c - the engine as a Lua C module for a plain Lua 5.4 interpreter.
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
 * the engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "future.h"
#include "pack.h"
#include "timer.h"

#define POOL_MT "luapool.host.pool"
#define FUTURE_MT "luapool.host.future"

int luaopen_luapool(lua_State *L);

/* A record delivered by the engine and not yet read by the iterator. */
typedef struct rec_node {
  struct rec_node *next;
  int kind; /* LUAPOOL_RECORD_* */
  uint64_t task;
  double priority;
  size_t name_len, text_len, value_len;
  char data[]; /* name, text, packed value, one after the other */
} rec_node;

typedef struct pool {
  luapool *lp;           /* NULL once closed */
  rec_node *head, *tail; /* records delivered, not yet read */
  lp_buf failures;       /* reports of unawaited failures, for wait() */
  int lost;              /* records dropped for want of memory */
} pool;

typedef struct hfuture {
  luapool_future *f; /* NULL once collected */
} hfuture;

/* ---- engine callbacks: copy, never run Lua ---- */

static void on_record(void *ud, const luapool_record *rec) {
  pool *p = ud;
  size_t nl = strlen(rec->name);
  rec_node *n = malloc(sizeof *n + nl + rec->text_len + rec->value_len);
  if (!n) {
    p->lost++;
    return;
  }
  n->next = NULL;
  n->kind = rec->kind;
  n->task = rec->task;
  n->priority = rec->priority;
  n->name_len = nl;
  n->text_len = rec->text_len;
  n->value_len = rec->kind == LUAPOOL_RECORD_EMIT ? rec->value_len : 0;
  memcpy(n->data, rec->name, nl);
  memcpy(n->data + nl, rec->text, rec->text_len);
  if (n->value_len) memcpy(n->data + nl + n->text_len, rec->value, n->value_len);
  if (p->tail)
    p->tail->next = n;
  else
    p->head = n;
  p->tail = n;
}

static void on_failure(void *ud, const char *message) {
  pool *p = ud;
  if (p->failures.len) lp_buf_append(&p->failures, "\n", 1);
  lp_buf_append(&p->failures, message, strlen(message));
}

/* ---- misuse ----
 *
 * A misuse error names the call as the user wrote it (pool:spawn), the
 * argument counted as written (self not counted), what was expected and
 * what came. */

static int arg_error(lua_State *L, const char *fname, int idx, const char *expected) {
  return luaL_error(L, "%s: argument %d: %s expected, got %s", fname, idx - 1, expected,
                    luaL_typename(L, idx));
}

/* The pool at index 1, open or closed. */
static pool *to_pool(lua_State *L, const char *fname) {
  pool *p = luaL_testudata(L, 1, POOL_MT);
  if (!p)
    luaL_error(L, "%s: called without a pool (write %s(...), with a colon); got %s", fname, fname,
               luaL_typename(L, 1));
  return p;
}

static pool *check_pool(lua_State *L, const char *fname) {
  pool *p = to_pool(L, fname);
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
  return arg_error(L, fname, idx, "task name (string)"), NULL;
}

/* Raises for a key of the options table t that is not in known (a
 * NULL-terminated list, which the message gives in order). */
static void check_keys(lua_State *L, int t, const char *fname, const char *const *known) {
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
  pool *p = to_pool(L, "pool:__gc");
  close_pool(p);
  while (p->head) {
    rec_node *n = p->head;
    p->head = n->next;
    free(n);
  }
  p->tail = NULL;
  lp_buf_free(&p->failures);
  return 0;
}

static int pool_close(lua_State *L) {
  pool *p = to_pool(L, "pool:close");
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
  check_keys(L, t, fname, known);
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
 * order =, memory_limit =, task_timeout =, retries =} -> pool, or nil,
 * message when the script cannot be loaded. */
static int l_open(lua_State *L) {
  static const char *const known[] = {"script",       "source",  "workers", "processes",
                                      "threads",      "pools",   "order",   "memory_limit",
                                      "task_timeout", "retries", NULL};
  if (!lua_istable(L, 1))
    return luaL_error(L, "luapool.open: argument 1: options table expected, got %s",
                      luaL_typename(L, 1));
  check_keys(L, 1, "luapool.open", known);
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
  cfg.retries = opt_field_int(L, 1, "retries", 0);
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
  luaL_setmetatable(L, POOL_MT);
  cfg.on_record = on_record;
  cfg.on_failure = on_failure;
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

/* ---- spawning and futures ---- */

/* Submits task `name` with the n values at index first as arguments, and
 * pushes its future (which keeps the pool userdata at index 1 alive).
 * fname names the call in errors. */
static void push_spawn(lua_State *L, pool *p, const char *fname, const char *name, int first, int n,
                       const luapool_task_opts *opts, int argbase) {
  hfuture *h = lua_newuserdatauv(L, sizeof *h, 1);
  h->f = NULL;
  luaL_setmetatable(L, FUTURE_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lp_buf args;
  lp_buf_init(&args);
  char err[320];
  lp_pack_ctx ctx = {NULL, NULL, NULL, argbase};
  if (lp_pack_values(L, first, n, &args, &ctx, err, sizeof err) != 0) {
    lp_buf_free(&args);
    luaL_error(L, "%s: %s", fname, err);
  }
  int rc = lp_future_submit(p->lp, name, &args, opts, &h->f);
  if (rc != 0) luaL_error(L, "%s: %s", fname, luapool_errmsg(p->lp));
}

/* pool:spawn([opts,] name, ...) -> future; opts as a task's spawn takes
 * them: priority, timeout, retries, pool. */
static int pool_spawn(lua_State *L) {
  pool *p = check_pool(L, "pool:spawn");
  int fi = 2;
  luapool_task_opts opts;
  luapool_task_opts_init(&opts);
  if (lua_istable(L, 2)) {
    read_task_opts(L, 2, "pool:spawn", &opts);
    fi = 3;
  }
  const char *name = check_name(L, fi, "pool:spawn");
  int n = lua_gettop(L) - fi;
  push_spawn(L, p, "pool:spawn", name, fi + 1, n, &opts, fi);
  return 1;
}

static hfuture *check_future(lua_State *L, const char *fname) {
  hfuture *h = luaL_testudata(L, 1, FUTURE_MT);
  if (!h)
    luaL_error(L, "%s: called without a future (write %s(...), with a colon); got %s", fname, fname,
               luaL_typename(L, 1));
  if (!h->f) luaL_error(L, "luapool: the future has been collected");
  return h;
}

/* Waits for the future at index idx and pushes its values, or raises its
 * error. Returns the number of values. */
static int get_values(lua_State *L, int idx, double timeout) {
  hfuture *h = lua_touserdata(L, idx);
  int rc = luapool_future_wait(h->f, timeout);
  if (rc == 0) {
    const char *data;
    size_t len;
    int n = 0;
    char err[256];
    lp_pack_ctx ctx = {NULL, NULL, NULL, 1};
    if (luapool_future_result(h->f, &data, &len) < 0 ||
        lp_unpack_values(L, data, len, &ctx, &n, err, sizeof err) != 0)
      return luaL_error(L, "luapool: cannot read the result of task %d",
                        (int)luapool_future_id(h->f));
    return n;
  }
  if (rc == LUAPOOL_ETASKFAIL || rc == LUAPOOL_ECANCELLED) {
    size_t len;
    const char *msg = luapool_future_text(h->f, &len);
    if (!msg) return luaL_error(L, "task (id %d) failed", (int)luapool_future_id(h->f));
    lua_pushlstring(L, msg, len);
    return lua_error(L);
  }
  if (rc == LUAPOOL_ETIMEDOUT)
    return luaL_error(L, "luapool: get: timed out after %f s waiting for task (id %d)", timeout,
                      (int)luapool_future_id(h->f));
  return luaL_error(L, "luapool: get: %s", luapool_strerror(rc));
}

/* An optional timeout at index idx: -1 when absent. */
static double opt_timeout(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER) arg_error(L, fname, idx, "timeout (seconds, a number)");
  double t = lua_tonumber(L, idx);
  if (!(t >= 0))
    luaL_error(L, "%s: argument %d: the timeout must be >= 0, got %s", fname, idx - 1,
               luaL_tolstring(L, idx, NULL));
  return t;
}

/* future:get([timeout]): blocks the host thread (records are collected
 * meanwhile). */
static int fut_get(lua_State *L) {
  check_future(L, "future:get");
  return get_values(L, 1, opt_timeout(L, 2, "future:get"));
}

/* future:done(): finished, or cancelled? Never waits. */
static int fut_done(lua_State *L) {
  lua_pushboolean(L, luapool_future_done(check_future(L, "future:done")->f));
  return 1;
}

/* future:ok(): finished without error? Counts as handling a failure. */
static int fut_ok(lua_State *L) {
  hfuture *h = check_future(L, "future:ok");
  lua_pushboolean(L, luapool_future_done(h->f) && luapool_future_wait(h->f, 0) == 0);
  return 1;
}

/* future:cancel(): once it returns true the future is done; get raises
 * "task 'NAME' (id N) was cancelled" at once. */
static int fut_cancel(lua_State *L) {
  lua_pushboolean(L, luapool_future_cancel(check_future(L, "future:cancel")->f));
  return 1;
}

static int fut_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)luapool_future_id(check_future(L, "future:id")->f));
  return 1;
}

static int fut_gc(lua_State *L) {
  hfuture *h = luaL_checkudata(L, 1, FUTURE_MT);
  luapool_future_free(h->f);
  h->f = NULL;
  return 0;
}

static int fut_tostring(lua_State *L) {
  hfuture *h = luaL_checkudata(L, 1, FUTURE_MT);
  if (!h->f) return lua_pushliteral(L, "luapool future (collected)"), 1;
  lua_pushfstring(L, "luapool future: task %d (%s)", (int)luapool_future_id(h->f),
                  luapool_future_done(h->f) ? "done" : "pending");
  return 1;
}

/* Returns the error message of the failed future at index 1. */
static int error_of(lua_State *L) {
  hfuture *h = lua_touserdata(L, 1);
  size_t len;
  const char *msg = luapool_future_text(h->f, &len);
  if (msg)
    lua_pushlstring(L, msg, len);
  else
    lua_pushliteral(L, "task failed");
  return 1;
}

/* pool:map(name, list [, opts]) -> the first result of name(item) for each
 * item, in list order; raises the first error in list order, once every
 * task has finished. */
static int pool_map(lua_State *L) {
  pool *p = check_pool(L, "pool:map");
  const char *name = check_name(L, 2, "pool:map");
  if (!lua_istable(L, 3)) arg_error(L, "pool:map", 3, "list (table)");
  luapool_task_opts opts;
  luapool_task_opts_init(&opts);
  if (!lua_isnoneornil(L, 4)) {
    if (!lua_istable(L, 4)) arg_error(L, "pool:map", 4, "options (table)");
    read_task_opts(L, 4, "pool:map", &opts);
  }
  lua_Integer n = luaL_len(L, 3);
  /* The options table at 4 keeps opts.pool alive while the tasks go. */
  lua_settop(L, 4);
  lua_createtable(L, (int)(n < 1 << 20 ? n : 0), 0); /* 5: the futures */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 3, i); /* 6 */
    push_spawn(L, p, "pool:map", name, 6, 1, &opts, 2);
    lua_seti(L, 5, i);
    lua_pop(L, 1);
  }
  lua_replace(L, 4);                                 /* 4: the futures */
  lua_createtable(L, (int)(n < 1 << 20 ? n : 0), 0); /* 5: the results */
  lua_pushnil(L);                                    /* 6: the first error */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 4, i); /* 7 */
    hfuture *h = lua_touserdata(L, 7);
    /* Every future is waited for, so a second failure is seen, not
     * reported as unawaited; the first one in list order is raised. */
    if (!lua_isnil(L, 6)) {
      luapool_future_wait(h->f, -1);
    } else if (luapool_future_wait(h->f, -1) == 0) {
      if (get_values(L, 7, -1) > 0) {
        lua_settop(L, 8);
        lua_seti(L, 5, i);
      }
    } else {
      lua_pushcfunction(L, error_of);
      lua_pushvalue(L, 7);
      lua_call(L, 1, 1);
      lua_replace(L, 6);
    }
    lua_settop(L, 6);
  }
  if (!lua_isnil(L, 6)) return lua_error(L);
  lua_pop(L, 1);
  return 1;
}

/* ---- as_completed ---- */

/* The iterator of lp.as_completed. Upvalues: the futures not yet given
 * (in list order), the deadline (lp_now() seconds, or -1), the timeout,
 * the number of futures. */
static int as_completed_next(lua_State *L) {
  int pending = lua_upvalueindex(1);
  double deadline = lua_tonumber(L, lua_upvalueindex(2));
  for (;;) {
    lua_Integer n = luaL_len(L, pending);
    if (n == 0) return 0;
    /* Those done first, in list order, as Python's as_completed does. */
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, pending, i);
      hfuture *h = lua_touserdata(L, -1);
      if (!h->f || luapool_future_done(h->f)) {
        for (lua_Integer k = i; k < n; k++) {
          lua_geti(L, pending, k + 1);
          lua_seti(L, pending, k);
        }
        lua_pushnil(L);
        lua_seti(L, pending, n);
        return 1;
      }
      lua_pop(L, 1);
    }
    double left = deadline < 0 ? -1 : deadline - lp_now();
    if (deadline >= 0 && left <= 0) {
      char msg[160];
      snprintf(msg, sizeof msg, "as_completed: timed out after %g s: %d of %d futures not done",
               lua_tonumber(L, lua_upvalueindex(3)), (int)n,
               (int)lua_tointeger(L, lua_upvalueindex(4)));
      return luaL_error(L, "%s", msg); /* at the line of the loop */
    }
    lua_geti(L, pending, 1);
    lua_getiuservalue(L, -1, 1);
    pool *p = lua_touserdata(L, -1);
    if (!p->lp) return luaL_error(L, "luapool: the pool is closed");
    luapool_future **fs = lua_newuserdatauv(L, sizeof *fs * (size_t)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, pending, i);
      fs[i - 1] = ((hfuture *)lua_touserdata(L, -1))->f;
      lua_pop(L, 1);
    }
    int rc = lp_future_wait_any(p->lp, fs, (int)n, left);
    lua_pop(L, 3);
    if (rc != 0 && rc != LUAPOOL_ETIMEDOUT)
      return luaL_error(
          L, "as_completed: %s",
          rc == LUAPOOL_EDEADLOCK ? "no future can finish (deadlock)" : luapool_strerror(rc));
  }
}

/* lp.as_completed(futures [, timeout]) -> an iterator over the futures in
 * the order they finish. With a timeout (seconds from this call), an
 * iteration that would go past it raises instead. The futures belong to
 * one pool. */
static int l_as_completed(lua_State *L) {
  const char *fname = "lp.as_completed";
  if (!lua_istable(L, 1))
    return luaL_error(L, "%s: argument 1: list of futures expected, got %s", fname,
                      luaL_typename(L, 1));
  double timeout = -1;
  if (!lua_isnoneornil(L, 2)) {
    if (lua_type(L, 2) != LUA_TNUMBER || !(lua_tonumber(L, 2) >= 0))
      return luaL_error(
          L, "%s: argument 2: timeout (seconds >= 0) expected, got %s", fname,
          lua_type(L, 2) == LUA_TNUMBER ? luaL_tolstring(L, 2, NULL) : luaL_typename(L, 2));
    timeout = lua_tonumber(L, 2);
  }
  lua_Integer n = luaL_len(L, 1);
  lua_settop(L, 2);
  lua_createtable(L, (int)(n < 1 << 20 ? n : 0), 0); /* 3: pending */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (!luaL_testudata(L, -1, FUTURE_MT))
      return luaL_error(L, "%s: item %d of the list is not a future of pool:spawn (got %s)", fname,
                        (int)i, luaL_typename(L, -1));
    lua_getiuservalue(L, -1, 1);
    if (i == 1)
      lua_insert(L, 4); /* 4: the pool of the first one */
    else if (!lua_rawequal(L, -1, 4))
      return luaL_error(L, "%s: the futures belong to different pools", fname);
    else
      lua_pop(L, 1);
    lua_seti(L, 3, i);
  }
  lua_settop(L, 3);
  lua_pushnumber(L, timeout >= 0 ? lp_now() + timeout : -1);
  lua_pushnumber(L, timeout);
  lua_pushinteger(L, n);
  lua_pushcclosure(L, as_completed_next, 4);
  return 1;
}

/* ---- waiting, records ---- */

/* pool:wait([timeout]) -> true once every task has finished; false,
 * "timeout"; or nil, message when a task failed without being awaited (the
 * message holds every such report since the last wait). A failure counts as
 * unawaited once its future has been collected without get(). */
static int pool_wait(lua_State *L) {
  pool *p = check_pool(L, "pool:wait");
  int rc = luapool_wait(p->lp, opt_timeout(L, 2, "pool:wait"));
  if (rc != LUAPOOL_ETIMEDOUT) {
    /* A future nobody holds any more can never be awaited: collecting it
     * now reports its task's failure here rather than at some later GC. */
    lua_gc(L, LUA_GCCOLLECT);
    int again = luapool_wait(p->lp, 0);
    if (rc == 0) rc = again;
  }
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

static const char *const kinds[] = {"emit", "print"};

/* The iterator: the next record as {value, text, kind, task, name,
 * priority}, or nil when none is left. */
static int records_next(lua_State *L) {
  pool *p = lua_touserdata(L, lua_upvalueindex(1));
  rec_node *n = p->head;
  if (!n) return 0;
  lua_createtable(L, 0, 6);
  const char *text = n->data + n->name_len;
  if (n->kind == LUAPOOL_RECORD_EMIT) {
    int nv = 0;
    char err[256];
    lp_pack_ctx ctx = {NULL, NULL, NULL, 1};
    int top = lua_gettop(L);
    if (lp_unpack_values(L, text + n->text_len, n->value_len, &ctx, &nv, err, sizeof err) != 0)
      lua_pushnil(L);
    lua_settop(L, top + 1);
  } else {
    lua_pushlstring(L, text, n->text_len);
  }
  lua_setfield(L, -2, "value");
  lua_pushlstring(L, text, n->text_len);
  lua_setfield(L, -2, "text");
  lua_pushstring(L, kinds[n->kind == LUAPOOL_RECORD_PRINT]);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, (lua_Integer)n->task);
  lua_setfield(L, -2, "task");
  lua_pushlstring(L, n->data, n->name_len);
  lua_setfield(L, -2, "name");
  lua_pushnumber(L, n->priority);
  lua_setfield(L, -2, "priority");
  /* Taken off the queue only now: a memory error above leaves it there. */
  p->head = n->next;
  if (!p->head) p->tail = NULL;
  free(n);
  return 1;
}

/* pool:records(): collects what the engine can deliver now (without
 * waiting), then iterates over every record delivered so far. */
static int pool_records(lua_State *L) {
  pool *p = to_pool(L, "pool:records");
  if (p->lp) luapool_wait(p->lp, 0);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, records_next, 1);
  return 1;
}

static int pool_cancel(lua_State *L) {
  luapool_cancel(check_pool(L, "pool:cancel")->lp);
  return 0;
}

static int pool_stats(lua_State *L) {
  pool *p = check_pool(L, "pool:stats");
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
  static const luaL_Reg pool_methods[] = {{"spawn", pool_spawn},
                                          {"map", pool_map},
                                          {"wait", pool_wait},
                                          {"records", pool_records},
                                          {"cancel", pool_cancel},
                                          {"stats", pool_stats},
                                          {"close", pool_close},
                                          {"__close", pool_close},
                                          {"__gc", pool_gc},
                                          {"__tostring", pool_tostring},
                                          {NULL, NULL}};
  static const luaL_Reg future_methods[] = {{"get", fut_get},
                                            {"done", fut_done},
                                            {"ok", fut_ok},
                                            {"cancel", fut_cancel},
                                            {"id", fut_id},
                                            {"__gc", fut_gc},
                                            {"__tostring", fut_tostring},
                                            {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"open", l_open}, {"as_completed", l_as_completed}, {NULL, NULL}};
  new_class(L, POOL_MT, pool_methods);
  new_class(L, FUTURE_MT, future_methods);
  luaL_newlib(L, funcs);
  lua_pushliteral(L, LUAPOOL_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

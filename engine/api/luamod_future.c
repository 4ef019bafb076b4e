/*
 * luamod_future.c - the host module's futures (pool:spawn's, pool:map's)
 * and lp.as_completed.
 *
 * A host future wraps a luapool_future of the public API: a wait blocks
 * the host thread (the engine delivers records meanwhile), and the future
 * outlives the pool's close with its outcome. It has the methods of a
 * task's future (get, done, ok, cancel, id: engine/lib/future.c), whose
 * waits suspend a task instead; both kinds are collected in list order by
 * the same map code (scripts/map.lua).
 */
#include <stdio.h>

#include <lauxlib.h>

#include "luamod.h"
#include "timer.h"

/* Submits task `name` with the n values at index first as arguments, and
 * pushes its future (which keeps the pool userdata at index 1 alive).
 * fname names the call in errors. */
void lp_luamod_spawn(lua_State *L, pool *p, const char *fname, const char *name, int first, int n,
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
int lp_luamod_get_values(lua_State *L, int idx, double timeout) {
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
double lp_luamod_timeout(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER)
    lp_luamod_arg_error(L, fname, idx, "timeout (seconds, a number)");
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
  return lp_luamod_get_values(L, 1, lp_luamod_timeout(L, 2, "future:get"));
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
int lp_luamod_as_completed(lua_State *L) {
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

const luaL_Reg lp_luamod_future_methods[] = {{"get", fut_get},
                                             {"done", fut_done},
                                             {"ok", fut_ok},
                                             {"cancel", fut_cancel},
                                             {"id", fut_id},
                                             {"__gc", fut_gc},
                                             {"__tostring", fut_tostring},
                                             {NULL, NULL}};

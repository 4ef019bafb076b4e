/*
 * lib.c - the task-side `luapool` module: its waiting machinery (lib.h),
 * the internals its Lua layer calls, and its registration.
 *
 * Everything that waits (get, wait, join, sleep, yield, watcher:next, a
 * channel's or a sequencer's waits) is a C function that arms the running
 * task, registers what will wake it and yields its coroutine with a
 * continuation; the worker goes on with other tasks, and the continuation
 * re-checks its condition when the task is resumed. A wake that arrives for
 * a condition already met is harmless: the loop just checks again.
 *
 * The module's C functions live with their concept: spawn.c, future.c
 * (get, wait), waits.c (join, sleep, yield, as_completed's watcher),
 * emit.c (emit, print, self), counter.c, libmap.c (map's spawning), and
 * sync.c with channel.c and sequencer.c. The convenient API built on them
 * (map, imap, as_completed, ...) is Lua, in scripts/luapool.lua, run by
 * lp_lib_module with the table of C functions as its argument; the part of
 * map that the host module shares is scripts/map.lua.
 */
#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "sync.h"
#include "timer.h"
#include "vm.h"

extern const char lp_embedded_luapool[];
extern const size_t lp_embedded_luapool_len;

/* ---- the waiting machinery ---- */

void lp_lib_check_cancelled(lua_State *L, lp_task *self) {
  lp_worker *w = lp_worker_of(L);
  if (self->deadline > 0 && lp_now() >= self->deadline) lp_pool_timed_out(L, self);
  uint64_t epoch = atomic_load_explicit(&w->eng->cancel_epoch, memory_order_relaxed);
  if (epoch == self->cancel_epoch && !atomic_load_explicit(&w->eng->stopping, memory_order_relaxed))
    return;
  self->cancel_epoch = epoch;
  if (lp_task_cancelled(self)) luaL_error(L, "luapool: task cancelled");
}

/* Registers a deadline (if any), then yields; the continuation k runs when
 * the task is resumed. */
int lp_lib_suspend(lua_State *L, lp_task *self, double deadline, lua_KContext ctx,
                   lua_KFunction k) {
  lp_worker *w = lp_worker_of(L);
  if (w->eng->inline_mode && deadline < 0)
    return luaL_error(L,
                      "luapool: deadlock: this wait could only be satisfied later, and "
                      "--workers 0 runs every spawn inline, in sequential order");
  /* A task with its own time limit wakes at the limit, at the latest. */
  if (self->deadline > 0 && (deadline < 0 || self->deadline < deadline)) deadline = self->deadline;
  if (w->eng->inline_mode) {
    /* A sequential run waits out a timed wait on the spot, as a blocking
     * call would: nothing else runs meanwhile. Then it is resumed. */
    lp_sleep(deadline - lp_now());
    return k(L, LUA_YIELD, ctx);
  }
  if (deadline >= 0 && lp_timers_add(&w->timers, self, deadline) != 0)
    return luaL_error(L, "luapool: out of memory");
  w->yield_kind = LP_YIELD_WAIT;
  return lua_yieldk(L, 0, ctx, k);
}

/* Undoes what lp_lib_suspend() registered; called first by every continuation. */
void lp_lib_resumed(lua_State *L, lp_task *self) {
  lp_timers_remove(&lp_worker_of(L)->timers, self);
  lp_task_disarm(self);
}

double lp_lib_deadline(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double s = luaL_checknumber(L, idx);
  if (s != s) luaL_argerror(L, idx, "timeout is NaN");
  return lp_now() + (s > 0 ? s : 0);
}

void lp_lib_not_in_process(lua_State *L, const char *what) {
  lp_uplink *up = lp_worker_of(L)->eng->up;
  if (up)
    luaL_error(L,
               "%s is not available in %s: it would not be shared with the "
               "rest of the run (use return values and records, or a pool of threads)",
               what, up->where);
}

/* ---- internals for the Lua layer ---- */

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return lua_gettop(L);
}

/* core.call(name, ...) calls the task function `name` in this state; the
 * function may wait (a chunk of a map is one task). */
static int l_call(lua_State *L) {
  char err[320];
  int fn = lp_vm_fn_id(L, 1, err, sizeof err);
  if (fn < 0) return luaL_error(L, "luapool: %s", err);
  if (lp_vm_push_fn(L, fn) != 0) return luaL_error(L, "luapool: %s", "task function vanished");
  lua_replace(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, call_k);
  return call_k(L, LUA_OK, 0);
}

/* core._error(message): raises it at the user's line (lp_lib_error). */
static int l_error(lua_State *L) { return lp_lib_error(L, "%s", luaL_checkstring(L, 1)); }

static int l_now(lua_State *L) {
  lua_pushnumber(L, lp_now());
  return 1;
}

int lp_lib_open(lua_State *L) {
  lp_future_open(L);
  lp_counter_open(L);
  lp_waits_open(L);
  lp_lib_map_open(L);
  lp_emit_open(L);
  return lp_lib_module(L);
}

int lp_lib_module(lua_State *L) {
  static const luaL_Reg funcs[] = {{"_call", l_call},
                                   {"_error", l_error},
                                   {"_now", l_now},
                                   {"_spawn_list", lp_lib_spawn_list},
                                   {NULL, NULL}};
  if (luaL_loadbufferx(L, lp_embedded_luapool, lp_embedded_luapool_len, "=luapool.lua", "t") !=
      LUA_OK)
    return lua_error(L);
  luaL_newlib(L, funcs);
  lp_spawn_register(L);
  lp_future_register(L);
  lp_waits_register(L);
  lp_emit_register(L);
  lp_counter_register(L);
  lp_sync_register(L);
  lp_lib_map_collect(L);
  lua_setfield(L, -2, "_collect");
  lua_call(L, 1, 1);
  return 1;
}

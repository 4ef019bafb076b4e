/*
 * future.c - futures: what a spawn returns, and every way of waiting for
 * one (future:get, luapool.wait) and asking it (done, ok, cancel, id).
 *
 * A future holds a reference to its task. get() on a child that is still
 * on top of the worker's own queue runs it right here, inline (see
 * "running a child inline" below): with spawn, the engine's hot path. Any
 * other wait arms the running task, links a waiter to the awaited task
 * (its self_waiter) and yields (lib.h); the awaited task's finish wakes it.
 */
#include <stddef.h>
#include <stdio.h>

#include <lauxlib.h>

#include "engine.h"
#include "fail.h"
#include "lib.h"
#include "pool.h"
#include "timer.h"
#include "vm.h"

#define FUTURE_MT "luapool.future"

/* ---- outcomes ---- */

/* Pushes the outcome of a finished task: its values, or raises its error. */
static int push_outcome(lua_State *L, lp_task *t) {
  atomic_store(&t->awaited, 1);
  int state = atomic_load_explicit(&t->state, memory_order_acquire);
  char err[256];
  int n = 0;
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  if (lp_unpack_values(L, t->result.data, t->result.len, &ctx, &n, err, sizeof err) != 0)
    return luaL_error(L, "luapool: cannot read the result of task %d: %s", (int)t->id, err);
  if (state == LP_TASK_OK) return n;
  if (n < 1) lua_pushstring(L, "task failed");
  return lua_error(L);
}

/* The future at idx, or NULL. Compares metatable addresses: luaL_testudata
 * would look the name up in the registry on every call. */
static lp_future *to_future(lua_State *L, int idx) {
  lp_future *f = lua_touserdata(L, idx);
  if (!f || !lua_getmetatable(L, idx)) return NULL;
  int ok = lua_topointer(L, -1) == lp_worker_of(L)->future_mt;
  lua_pop(L, 1);
  return ok && f->t ? f : NULL;
}

static lp_future *check_future(lua_State *L, int idx) {
  lp_future *f = to_future(L, idx);
  if (!f) luaL_typeerror(L, idx, "luapool future");
  return f;
}

static void fire_wake(lp_waiter *wt, lp_task *done) {
  (void)done;
  lp_task *waiter = (lp_task *)((char *)wt - offsetof(lp_task, self_waiter));
  lp_task_wake(waiter);
}

/* Waits until t finishes or the deadline passes (the deadline lives at
 * stack index `di`). Returns 1 when finished, 0 on timeout; yields through
 * k otherwise, so callers call it again from their continuation. */
static int wait_for(lua_State *L, lp_task *self, lp_task *t, int di, lua_KContext ctx,
                    lua_KFunction k) {
  for (;;) {
    if (lp_task_finished(t)) return 1;
    lp_lib_check_cancelled(L, self);
    double deadline = lua_tonumber(L, di);
    if (deadline >= 0 && lp_now() >= deadline) return 0;
    /* A sequential run cannot wait for later: lp_lib_suspend raises the
     * deadlock error, or waits out the deadline, before anything is linked. */
    if (lp_worker_of(L)->eng->inline_mode) return lp_lib_suspend(L, self, deadline, ctx, k);
    lp_task_arm(self);
    self->self_waiter.fire = fire_wake;
    if (lp_task_watch(t, &self->self_waiter) == 0) {
      lp_lib_suspend(L, self, deadline, ctx, k);
      return -1; /* not reached: lua_yieldk does not return */
    }
    /* Finished meanwhile. If a wake already took our arm, it is on its way
     * to our inbox: yield once to receive it. */
    if (!lp_task_disarm(self)) {
      lp_worker_of(L)->yield_kind = LP_YIELD_WAIT;
      lua_yieldk(L, 0, ctx, k);
    }
  }
}

static void unwait(lua_State *L, lp_task *self, lp_task *t) {
  lp_lib_resumed(L, self);
  lp_task_unwatch(t, &self->self_waiter);
}

static int get_timed_out(lua_State *L, lp_task *t) {
  char msg[64];
  snprintf(msg, sizeof msg, "%g", lua_tonumber(L, 2));
  return luaL_error(L, "luapool: get: timed out after %s s waiting for task '%s' (id %I)", msg,
                    lp_names_get(&lp_worker_of(L)->eng->names, t->fn), (lua_Integer)t->id);
}

static int get_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = lp_worker_of(L)->current;
  lp_task *t = ((lp_future *)lua_touserdata(L, 1))->t;
  unwait(L, self, t);
  int r = wait_for(L, self, t, 3, ctx, get_k);
  if (r == 1) return push_outcome(L, t);
  return get_timed_out(L, t);
}

/* ---- running a child inline ----
 *
 * When a task asks for the result of its own child that is still on top of
 * its worker's queue (nobody stole it), the child runs right here, inside
 * the parent's coroutine, as a protected call: no coroutine, no yield, no
 * hand-back. The child is still a task of its own (its id, its records,
 * its errors); if it waits, it yields the shared coroutine and is resumed
 * as itself. The nesting is bounded so the C stack stays small. */
#define INLINE_MAX 40

/* Ends a task run inline: records its outcome, makes `self` the running
 * task again, and leaves only the future at stack index 1. */
static void inline_end(lua_State *L, int status, lp_task *self) {
  lp_worker *w = lp_worker_of(L);
  lp_task *t = w->current;
  w->inline_depth--;
  lp_stats_inc(&w->stats.run);
  t->co = NULL;
  if (status == LUA_OK || status == LUA_YIELD) {
    lp_task_finish(t, LP_TASK_OK, &w->result);
  } else {
    /* The message handler added the traceback. */
    const char *msg = luaL_tolstring(L, -1, NULL);
    lua_pushfstring(L, "task '%s' (id %I) failed: %s", lp_names_get(&w->eng->names, t->fn),
                    (lua_Integer)t->id, msg);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    lp_fail_text(w, t, text, len);
  }
  w->current = self;
  lp_stats_switch(&w->stats, self);
  lua_settop(L, 1);
}

static int fut_get(lua_State *L);

/* The child yielded while running inline; it has ended now. */
static int get_inline_k(lua_State *L, int status, lua_KContext ctx) {
  inline_end(L, status, (lp_task *)ctx);
  return fut_get(L);
}

/* Message handler of a task run inline: its traceback ends at its own
 * entry, the innermost lp_pool_task_entry on the stack; the levels below
 * are its parent's. Found only when it fails: a get() that runs a child
 * inline must not pay for a walk of the stack (fib's depth made it 2x). */
static int inline_traceback(lua_State *L) {
  lua_Debug ar;
  int keep = 0;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "f", &ar);
    int entry = lua_tocfunction(L, -1) == lp_pool_task_entry;
    lua_pop(L, 1);
    if (entry) {
      keep = level;
      break;
    }
  }
  return lp_vm_traceback_upto(L, keep);
}

/* Runs t (a child of self taken from our queue) inside self's coroutine.
 * Returns its pcall status when it ends without yielding. */
static int inline_run(lua_State *L, lp_task *self, lp_task *t) {
  lp_worker *w = lp_worker_of(L);
  t->co = self->co;
  t->co_base = self->co_base;
  t->owner = w->index;
  t->cancel_epoch = self->cancel_epoch;
  atomic_store_explicit(&t->state, LP_TASK_RUNNING, memory_order_relaxed);
  w->inline_depth++;
  if (t->depth > atomic_load_explicit(&w->eng->max_depth, memory_order_relaxed))
    atomic_store_explicit(&w->eng->max_depth, t->depth, memory_order_relaxed);
  w->current = t;
  lp_stats_switch(&w->stats, t);
  lua_settop(L, 1);
  lua_pushcfunction(L, inline_traceback);
  lua_pushcfunction(L, lp_pool_task_entry);
  return lua_pcallk(L, 0, 0, 2, (lua_KContext)self, get_inline_k);
}

/* While a task waits for a child that nobody has stolen yet and that is the
 * newest task of its worker's queue, the child runs right here, inline.
 * Only the awaited child: running a sibling inline could hold the waiter
 * hostage to a sibling that sleeps. */
static int fut_get(lua_State *L) {
  lp_future *f = check_future(L, 1);
  lp_worker *w = lp_worker_of(L);
  for (;;) {
    if (lp_task_finished(f->t)) return push_outcome(L, f->t);
    lp_task *self = lp_lib_waiting(L, "future:get");
    /* Only without a timeout: an inline run cannot be abandoned. */
    if (!lua_isnoneornil(L, 2) || w->inline_depth >= INLINE_MAX ||
        atomic_load_explicit(&w->eng->cancel_epoch, memory_order_relaxed) != 0)
      break;
    lp_task *c = lp_sched_take_child(&w->eng->sched, w->index, self, f->t);
    if (!c) break;
    inline_end(L, inline_run(L, self, c), self);
  }
  lp_task *self = w->current;
  double deadline = lp_lib_deadline(L, 2);
  lua_settop(L, 2);
  lua_pushnumber(L, deadline);
  int r = wait_for(L, self, f->t, 3, 0, get_k);
  if (r == 1) return push_outcome(L, f->t);
  return get_timed_out(L, f->t);
}

/* A task cancelled through its future is done at once: it will never give
 * a result, even while it still unwinds (get waits for that). */
static int fut_done(lua_State *L) {
  lp_task *t = check_future(L, 1)->t;
  lua_pushboolean(L, lp_task_finished(t) || atomic_load_explicit(&t->cancel, memory_order_relaxed));
  return 1;
}

static int fut_ok(lua_State *L) {
  lp_task *t = check_future(L, 1)->t;
  if (!lp_task_finished(t)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  atomic_store(&t->awaited, 1);
  lua_pushboolean(L, atomic_load(&t->state) == LP_TASK_OK);
  return 1;
}

static int fut_cancel(lua_State *L) {
  lua_pushboolean(L, lp_task_cancel(check_future(L, 1)->t));
  return 1;
}

/* core._drop(futures): the caller gives these up (a map that raised, an
 * imap loop left early): those not finished are cancelled, and a failure of
 * any of them counts as handled. */
static int l_drop(lua_State *L) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    lp_future *f = to_future(L, -1);
    lua_pop(L, 1);
    if (!f) continue;
    atomic_store(&f->t->awaited, 1);
    lp_task_cancel(f->t);
  }
  return 0;
}

static int fut_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_future(L, 1)->t->id);
  return 1;
}

static int fut_gc(lua_State *L) {
  lp_future *f = lua_touserdata(L, 1);
  if (f->t) lp_task_unref(f->t);
  f->t = NULL;
  return 0;
}

static int fut_tostring(lua_State *L) {
  lp_future *f = luaL_checkudata(L, 1, FUTURE_MT);
  if (!f->t) return lua_pushstring(L, "luapool.future (invalid)"), 1;
  lua_pushfstring(L, "luapool.future: task %d (%s)", (int)f->t->id,
                  lp_task_finished(f->t) ? "done" : "pending");
  return 1;
}

/* ---- luapool.wait ---- */

/* luapool.wait(futures [, timeout]): the continuation keeps, at index 3, the
 * deadline and, at index 4, how many futures are known to be finished. */
static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = lp_worker_of(L)->current;
  lua_Integer i = lua_tointeger(L, 4);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (status == LUA_YIELD && i <= n) {
    lua_rawgeti(L, 1, i);
    unwait(L, self, ((lp_future *)lua_touserdata(L, -1))->t);
    lua_pop(L, 1);
  }
  for (; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    lp_future *f = to_future(L, -1);
    lua_pop(L, 1);
    if (!f) return luaL_error(L, "luapool.wait: item %d is not a future", (int)i);
    lua_pushinteger(L, i);
    lua_replace(L, 4);
    int r = wait_for(L, self, f->t, 3, ctx, wait_k);
    if (r == 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_wait(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double deadline = lp_lib_deadline(L, 2);
  lua_settop(L, 2);
  lua_pushnumber(L, deadline);
  lua_pushinteger(L, 1);
  /* Nothing to wait for is not an error, even outside a coroutine. */
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  int all = 1;
  for (lua_Integer i = 1; i <= n && all; i++) {
    lua_rawgeti(L, 1, i);
    lp_future *f = to_future(L, -1);
    lua_pop(L, 1);
    if (!f) return luaL_error(L, "luapool.wait: item %d is not a future", (int)i);
    all = lp_task_finished(f->t);
  }
  if (all) return lua_pushboolean(L, 1), 1;
  lp_lib_waiting(L, "luapool.wait");
  return wait_k(L, LUA_OK, 0);
}

lp_future *lp_future_test(lua_State *L, int idx) { return to_future(L, idx); }

void lp_future_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"get", fut_get},       {"done", fut_done}, {"ok", fut_ok},
                                     {"cancel", fut_cancel}, {"id", fut_id},     {NULL, NULL}};
  luaL_newmetatable(L, FUTURE_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, fut_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, fut_tostring);
  lua_setfield(L, -2, "__tostring");
  lp_worker *w = lp_worker_of(L);
  w->future_mt = lua_topointer(L, -1);
  w->future_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void lp_future_register(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"wait", l_wait}, {"_get", fut_get}, {"_drop", l_drop}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}

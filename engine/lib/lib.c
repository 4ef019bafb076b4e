/*
 * lib.c - the task-side `luapool` module: the C primitives tasks call.
 *
 * Everything that waits (get, wait, join, sleep, yield, watcher:next) is a
 * C function that arms the running task, registers what will wake it and
 * yields its coroutine with a continuation; the worker goes on with other
 * tasks, and the continuation re-checks its condition when the task is
 * resumed. A wake that arrives for a condition already met is harmless: the
 * loop just checks again. The convenient API built on these (map, imap,
 * as_completed, ...) is Lua, in scripts/luapool.lua, run by lp_lib_open.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "engine.h"
#include "fail.h"
#include "pool.h"
#include "proc.h"
#include "spin.h"
#include "timer.h"
#include "lib.h"
#include "sync.h"
#include "vm.h"

#define FUTURE_MT "luapool.future"
#define COUNTER_MT "luapool.counter"
#define WATCH_MT "luapool.watch"

extern const char lp_embedded_luapool[];
extern const size_t lp_embedded_luapool_len;

typedef struct lp_future {
  lp_task *t;
} lp_future;

/* ---- helpers ---- */

static lp_worker *worker(lua_State *L) { return lp_worker_of(L); }

/* The task running in L, or an error naming the call. */
lp_task *lp_lib_running(lua_State *L, const char *what) {
  lp_worker *w = worker(L);
  if (!w || !w->current) {
    luaL_error(L, "%s: only a running task can do this", what);
    return NULL; /* not reached: luaL_error does not return */
  }
  return w->current;
}

/* The task in L, checked to be able to suspend right here. */
lp_task *lp_lib_waiting(lua_State *L, const char *what) {
  lp_task *self = lp_lib_running(L, what);
  if (L != self->co || !lua_isyieldable(L))
    lp_lib_error(L,
                 "%s: cannot wait here: inside a coroutine of the task's own or a C function "
                 "that cannot yield (such as a table.sort comparator)",
                 what);
  return self;
}

void lp_lib_check_cancelled(lua_State *L, lp_task *self) {
  lp_worker *w = worker(L);
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
  lp_worker *w = worker(L);
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
  lp_timers_remove(&worker(L)->timers, self);
  lp_task_disarm(self);
}

double lp_lib_deadline(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double s = luaL_checknumber(L, idx);
  if (s != s) luaL_argerror(L, idx, "timeout is NaN");
  return lp_now() + (s > 0 ? s : 0);
}

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

/* ---- spawn ---- */

static int spawn_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return 1; /* the future, left on top before yielding */
}

static double opt_number(lua_State *L, int idx, const char *what, const char *name, double dflt) {
  int ty = lua_getfield(L, idx, name);
  if (ty == LUA_TNIL) {
    lua_pop(L, 1);
    return dflt;
  }
  if (ty != LUA_TNUMBER) lp_lib_error(L, "%s: option '%s' must be a number", what, name);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (v != v) lp_lib_error(L, "%s: option '%s' is NaN", what, name);
  return v;
}

void lp_lib_read_options(lua_State *L, int idx, const char *what, spawn_opts *o) {
  static const char *known[] = {"priority", "pool", "timeout", "retries", NULL};
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int ok = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (int i = 0; known[i]; i++)
        if (strcmp(lua_tostring(L, -2), known[i]) == 0) ok = 1;
    if (!ok) {
      lua_pop(L, 1);
      /* map and its kin take chunksize besides (the Lua layer removes it). */
      lp_lib_error(L, "%s: unknown option '%s' (known: priority, pool, timeout, retries%s)", what,
                   luaL_tolstring(L, -1, NULL), strcmp(what, "luapool.spawn") ? ", chunksize" : "");
    }
    lua_pop(L, 1);
  }
  if (lua_getfield(L, idx, "pool") != LUA_TNIL) {
    luapool *eng = lp_worker_of(L)->eng;
    size_t len;
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    o->pool = name ? lp_engine_pool(eng, name, len) : -1;
    if (o->pool < 0) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int i = 0; i < eng->npools; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, eng->pools[i].name);
      }
      luaL_pushresult(&b);
      const char *names = lua_tostring(L, -1);
      const char *asked = luaL_tolstring(L, -2, NULL);
      lp_lib_error(L, "%s: no pool named '%s' (%s: %s)", what, asked,
                   eng->link ? "a task in a worker process spawns into its own pool" : "pools",
                   names);
    }
  }
  lua_pop(L, 1);
  o->priority = opt_number(L, idx, what, "priority", o->priority);
  o->timeout = opt_number(L, idx, what, "timeout", o->timeout);
  if (o->timeout < 0) lp_lib_error(L, "%s: option 'timeout' must not be negative", what);
  double r = opt_number(L, idx, what, "retries", o->retries);
  if (r < 0 || r > 1e6 || r != (int)r)
    lp_lib_error(L, "%s: option 'retries' must be a whole number from 0", what);
  o->retries = (int)r;
}

/* Makes the future (pushed) and the task of a spawn from its packed
 * arguments (taken), placing it in the report and the figures; the caller
 * queues it (lp_lib_spawn_queue). NULL when out of memory. */
lp_task *lp_lib_spawn_new(lua_State *L, lp_task *self, int fn, const spawn_opts *o, lp_buf *args) {
  lp_worker *w = worker(L);
  luapool *eng = w->eng;
  lp_future *f = lua_newuserdatauv(L, sizeof *f, 0);
  f->t = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->future_mt_ref);
  lua_setmetatable(L, -2);
  lp_task *t = lp_task_new(eng, self, fn, o->priority, args);
  if (!t) return NULL;
  t->timeout = o->timeout;
  t->retries = o->retries;
  t->pool = o->pool;
  lp_task_ref(t); /* the future's */
  f->t = t;
  lp_report_spawn(&eng->report, self, t);
  lp_stats_spawn(&w->stats, self, t);
  return t;
}

/* Where a new task of a threads or processes run goes: its pool's worker
 * processes, another pool's threads, or the spawning worker's own queue. */
int lp_lib_spawn_dest(lua_State *L, lp_task *t) {
  luapool *eng = worker(L)->eng;
  if (eng->pools[t->pool].procs) return LP_SPAWN_PROCS;
  if (t->pool != eng->sched.wq[worker(L)->index].pool) return LP_SPAWN_INJECT;
  return LP_SPAWN_OWN;
}

/* Queues a task made by lp_lib_spawn_new (not in a sequential run).
 * 0, or -1 when out of memory (then the task has failed). */
int lp_lib_spawn_queue(lua_State *L, lp_task *t, int dest) {
  lp_worker *w = worker(L);
  luapool *eng = w->eng;
  int rc = 0;
  if (dest == LP_SPAWN_PROCS)
    rc = lp_procs_push(eng, t);
  else if (dest == LP_SPAWN_INJECT)
    lp_sched_inject(&eng->sched, t); /* another pool's threads */
  else
    rc = lp_sched_push(&eng->sched, w->index, t);
  /* Out of memory in the queue: this child can never run. */
  if (rc != 0) lp_task_finish(t, LP_TASK_FAILED, NULL);
  return rc;
}

static int l_spawn(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.spawn");
  lp_worker *w = worker(L);
  luapool *eng = w->eng;
  int base = 1;
  spawn_opts o = {self->pool, self->priority, eng->cfg.task_timeout, eng->cfg.retries};
  if (lua_type(L, 1) == LUA_TTABLE) {
    lp_lib_read_options(L, 1, "luapool.spawn", &o);
    base = 2;
  }
  char err[320];
  int fn;
  const void *fp = lua_type(L, base) == LUA_TFUNCTION ? lua_topointer(L, base) : NULL;
  if (fp && fp == w->last_fn) {
    fn = w->last_fn_id;
  } else {
    fn = lp_vm_fn_id(L, base, err, sizeof err);
    if (fn < 0) return lp_lib_fn_error(L, "luapool.spawn", base, base, err);
    if (fp) {
      /* The id cache also anchors the function, so the address stays its. */
      w->last_fn = fp;
      w->last_fn_id = fn;
    }
  }
  int nargs = lua_gettop(L) - base;
  lp_buf args;
  lp_buf_init(&args);
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, base + 1);
  if (lp_pack_values(L, base + 1, nargs, &args, &ctx, err, sizeof err) != 0)
    return lp_lib_error(L, "luapool.spawn: %s", err);
  lp_task *t = lp_lib_spawn_new(L, self, fn, &o, &args);
  if (!t) return luaL_error(L, "luapool.spawn: out of memory");
  if (!eng->inline_mode) {
    if (lp_lib_spawn_queue(L, t, lp_lib_spawn_dest(L, t)) != 0)
      return luaL_error(L, "luapool.spawn: out of memory");
    return 1;
  }
  /* Sequential reference: the child, and everything it spawns, runs to
   * its end before the parent goes on. The parent goes back on the stack
   * under the child, and yields. */
  if (L == self->co && lua_isyieldable(L)) {
    lp_sched_push(&eng->sched, w->index, self);
    lp_sched_push(&eng->sched, w->index, t);
    w->yield_kind = LP_YIELD_WAIT;
    return lua_yieldk(L, 0, 0, spawn_k);
  }
  lp_sched_push(&eng->sched, w->index, t);
  lp_pool_run_nested(w, t);
  return 1;
}

/* ---- futures ---- */

/* The future at idx, or NULL. Compares metatable addresses: luaL_testudata
 * would look the name up in the registry on every call. */
static lp_future *to_future(lua_State *L, int idx) {
  lp_future *f = lua_touserdata(L, idx);
  if (!f || !lua_getmetatable(L, idx)) return NULL;
  int ok = lua_topointer(L, -1) == worker(L)->future_mt;
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
    if (worker(L)->eng->inline_mode) return lp_lib_suspend(L, self, deadline, ctx, k);
    lp_task_arm(self);
    self->self_waiter.fire = fire_wake;
    if (lp_task_watch(t, &self->self_waiter) == 0) {
      lp_lib_suspend(L, self, deadline, ctx, k);
      return -1; /* not reached: lua_yieldk does not return */
    }
    /* Finished meanwhile. If a wake already took our arm, it is on its way
     * to our inbox: yield once to receive it. */
    if (!lp_task_disarm(self)) {
      worker(L)->yield_kind = LP_YIELD_WAIT;
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
                    lp_names_get(&worker(L)->eng->names, t->fn), (lua_Integer)t->id);
}

static int get_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = worker(L)->current;
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
  lp_worker *w = worker(L);
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
  lp_worker *w = worker(L);
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
  lp_worker *w = worker(L);
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

/* ---- wait, join ---- */

/* luapool.wait(futures [, timeout]): the continuation keeps, at index 3, the
 * deadline and, at index 4, how many futures are known to be finished. */
static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = worker(L)->current;
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

/* luapool.join([timeout]): the deadline is at stack index 2. */
static int join_after_k(lua_State *L, int status, lua_KContext ctx);

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = worker(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  for (;;) {
    if (lp_task_pending(self) == 1) break;
    lp_lib_check_cancelled(L, self);
    double deadline = lua_tonumber(L, 2);
    if (deadline >= 0 && lp_now() >= deadline) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lp_task_arm(self);
    if (!lp_task_join_begin(self)) {
      /* Wait for the wake; if the deadline comes first, give the flag back
       * (or, if a child took it, its wake is already on the way). */
      return lp_lib_suspend(L, self, deadline, ctx, join_after_k);
    }
    if (!lp_task_disarm(self)) { /* a wake is on its way: take it */
      worker(L)->yield_kind = LP_YIELD_WAIT;
      return lua_yieldk(L, 0, ctx, join_k);
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Resumed from a join wait: by the child that took the flag, by the
 * deadline, or by a cancel. */
static int join_after_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = worker(L)->current;
  (void)status;
  lp_lib_resumed(L, self);
  /* Give the flag back if no child took it. If one did, it found us
   * already disarmed (whoever resumed us disarmed first), so no second
   * hand-back is on its way. Then look again. */
  lp_task_join_end(self);
  return join_k(L, LUA_OK, ctx);
}

static int l_join(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.join");
  double deadline = lp_lib_deadline(L, 1);
  lua_settop(L, 1);
  lua_pushnumber(L, deadline);
  if (lp_task_pending(self) == 1) return lua_pushboolean(L, 1), 1;
  lp_lib_waiting(L, "luapool.join");
  return join_k(L, LUA_OK, 0);
}

/* ---- sleep, yield ---- */

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = worker(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  lp_lib_check_cancelled(L, self);
  double deadline = lua_tonumber(L, 2);
  if (lp_now() >= deadline) return 0;
  lp_task_arm(self);
  return lp_lib_suspend(L, self, deadline, ctx, sleep_k);
}

static int l_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s != s) return luaL_argerror(L, 1, "NaN");
  lp_worker *w = worker(L);
  lp_lib_waiting(L, "luapool.sleep");
  if (w->eng->inline_mode) {
    lp_sleep(s); /* nothing else could run meanwhile on this thread */
    return 0;
  }
  lua_settop(L, 1);
  lua_pushnumber(L, lp_now() + (s > 0 ? s : 0));
  if (s <= 0) return lp_pool_yield_current(w), lua_yieldk(L, 0, 0, sleep_k);
  return sleep_k(L, LUA_OK, 0);
}

static int yield_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  lp_lib_check_cancelled(L, worker(L)->current);
  return 0;
}

static int l_yield(lua_State *L) {
  lp_worker *w = worker(L);
  lp_lib_waiting(L, "luapool.yield");
  if (w->eng->inline_mode) return 0;
  lp_pool_yield_current(w);
  return lua_yieldk(L, 0, 0, yield_k);
}

/* ---- records ---- */

static int l_emit(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.emit");
  lp_worker *w = worker(L);
  luaL_checkany(L, 1);
  double prio = self->priority;
  if (!lua_isnoneornil(L, 2)) prio = luaL_checknumber(L, 2);
  lp_buf b;
  lp_buf_init(&b);
  char err[320];
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  if (lp_pack_values(L, 1, 1, &b, &ctx, err, sizeof err) != 0)
    return luaL_error(L, "luapool.emit: %s", err);
  lp_record *rec = lp_record_new(LUAPOOL_RECORD_EMIT, self, prio, b.data, b.len);
  lp_buf_free(&b);
  if (!rec) return luaL_error(L, "luapool.emit: out of memory");
  lp_report_add(&w->eng->report, self, rec);
  return 0;
}

/* print() inside a task makes a text record; outside a task (the script's
 * top level) it writes to stderr, so stdout carries only the report. */
static int l_print(lua_State *L) {
  lp_worker *w = worker(L);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  if (!w || !w->current) {
    fprintf(stderr, "%s\n", s);
    return 0;
  }
  lp_task *self = w->current;
  lp_record *rec = lp_record_new(LUAPOOL_RECORD_PRINT, self, self->priority, s, len);
  if (!rec) return luaL_error(L, "print: out of memory");
  lp_report_add(&w->eng->report, self, rec);
  return 0;
}

/* ---- counters ---- */

void lp_lib_not_in_process(lua_State *L, const char *what) {
  if (lp_worker_of(L)->eng->link)
    luaL_error(L,
               "%s is not available in a worker process: it would not be shared with the "
               "rest of the run (use return values and records, or a pool of threads)",
               what);
}

/* A counter is a slot of the engine's; inside a worker process it is only
 * a name, and every use asks the engine (the task waits for the answer). */
typedef struct lp_counter {
  _Atomic int64_t *slot; /* NULL inside a worker process */
  int name;
} lp_counter;

static int l_counter(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  luapool *eng = worker(L)->eng;
  int id = lp_names_intern(&eng->names, name, len);
  _Atomic int64_t *slot = id >= 0 && !eng->link ? lp_engine_counter(eng, id) : NULL;
  if (id < 0 || (!slot && !eng->link)) return luaL_error(L, "luapool.counter: out of memory");
  lp_counter *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->slot = slot;
  c->name = id;
  luaL_setmetatable(L, COUNTER_MT);
  return 1;
}

static int counter_add(lua_State *L) {
  lp_counter *c = luaL_checkudata(L, 1, COUNTER_MT);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  if (!c->slot) return lp_procworker_counter(L, c->name, (int64_t)n, 1);
  lua_pushinteger(L, (lua_Integer)(atomic_fetch_add(c->slot, (int64_t)n) + (int64_t)n));
  return 1;
}

static int counter_get(lua_State *L) {
  lp_counter *c = luaL_checkudata(L, 1, COUNTER_MT);
  if (!c->slot) return lp_procworker_counter(L, c->name, 0, 0);
  lua_pushinteger(L, (lua_Integer)atomic_load(c->slot));
  return 1;
}

/* ---- self ---- */

static int l_self(lua_State *L) {
  lp_task *t = lp_lib_running(L, "luapool.self");
  lp_worker *w = worker(L);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)t->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, lp_names_get(&w->eng->names, t->fn));
  lua_setfield(L, -2, "name");
  lua_pushstring(L, w->eng->pools[t->pool].name);
  lua_setfield(L, -2, "pool");
  lua_pushinteger(L, w->index + 1);
  lua_setfield(L, -2, "worker");
  lua_pushinteger(L, (lua_Integer)getpid());
  lua_setfield(L, -2, "pid");
  lua_pushinteger(L, t->depth);
  lua_setfield(L, -2, "depth");
  lua_Number p = t->priority;
  if (p == floor(p) && fabs(p) < 9e15)
    lua_pushinteger(L, (lua_Integer)p);
  else
    lua_pushnumber(L, p);
  lua_setfield(L, -2, "priority");
  return 1;
}

/* ---- watchers: futures in completion order (as_completed) ---- */

typedef struct watch_node {
  lp_waiter w;
  struct lp_watch *watch;
  lp_task *t;
  int index;
  int linked;
} watch_node;

typedef struct lp_watch {
  _Atomic int lock;
  _Atomic int refs; /* the userdata + one per linked node */
  int n;
  int head, tail; /* ring of finished indices, in finishing order */
  int *ready;
  lp_task *waiter; /* the task inside next(), or NULL */
  watch_node *nodes;
} lp_watch;

static void watch_unref(lp_watch *wa) {
  if (atomic_fetch_sub(&wa->refs, 1) != 1) return;
  for (int i = 0; i < wa->n; i++) lp_task_unref(wa->nodes[i].t);
  free(wa->ready);
  free(wa->nodes);
  free(wa);
}

static void watch_fire(lp_waiter *w, lp_task *done) {
  (void)done;
  watch_node *node = (watch_node *)w;
  lp_watch *wa = node->watch;
  lp_spin_lock(&wa->lock);
  wa->ready[wa->tail++] = node->index;
  lp_task *waiter = wa->waiter;
  lp_spin_unlock(&wa->lock);
  if (waiter) lp_task_wake(waiter);
  watch_unref(wa);
}

static int l_watch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_rawlen(L, 1);
  lp_watch **ud = lua_newuserdatauv(L, sizeof *ud, 1);
  *ud = NULL;
  luaL_setmetatable(L, WATCH_MT);
  lp_watch *wa = calloc(1, sizeof *wa);
  if (!wa || !(wa->ready = malloc(sizeof(int) * ((size_t)n + 1))) ||
      !(wa->nodes = calloc((size_t)n + 1, sizeof(watch_node)))) {
    if (wa) free(wa->ready);
    free(wa);
    return luaL_error(L, "luapool: out of memory");
  }
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    lp_future *f = to_future(L, -1);
    lua_pop(L, 1);
    if (!f) {
      for (int j = 0; j < i; j++) lp_task_unref(wa->nodes[j].t);
      free(wa->ready);
      free(wa->nodes);
      free(wa);
      return lp_lib_error(L, "luapool.as_completed: argument 1: item %d is not a future", i + 1);
    }
    wa->nodes[i].t = f->t;
    lp_task_ref(f->t);
  }
  wa->n = n;
  atomic_init(&wa->refs, 1);
  *ud = wa;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* keeps the futures alive */
  for (int i = 0; i < n; i++) {
    watch_node *node = &wa->nodes[i];
    node->w.fire = watch_fire;
    node->watch = wa;
    node->index = i + 1;
    atomic_fetch_add(&wa->refs, 1);
    if (lp_task_watch(node->t, &node->w) != 0) {
      atomic_fetch_sub(&wa->refs, 1);
      lp_spin_lock(&wa->lock);
      wa->ready[wa->tail++] = i + 1;
      lp_spin_unlock(&wa->lock);
    }
  }
  return 1;
}

static lp_watch *check_watch(lua_State *L) {
  lp_watch *wa = *(lp_watch **)luaL_checkudata(L, 1, WATCH_MT);
  if (!wa) luaL_argerror(L, 1, "closed watcher");
  return wa;
}

/* watcher:next([timeout]) -> index of the next finished future, in finishing
 * order; nil when all were returned; false on timeout. */
static int watch_next_k(lua_State *L, int status, lua_KContext ctx) {
  lp_watch *wa = check_watch(L);
  lp_task *self = worker(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  for (;;) {
    lp_spin_lock(&wa->lock);
    wa->waiter = NULL;
    int got = wa->head < wa->tail ? wa->ready[wa->head++] : 0;
    int all = wa->head >= wa->n;
    if (!got && !all) {
      lp_task_arm(self);
      wa->waiter = self;
    }
    lp_spin_unlock(&wa->lock);
    if (got) return lua_pushinteger(L, got), 1;
    if (all) return lua_pushnil(L), 1;
    lp_lib_check_cancelled(L, self);
    double deadline = lua_tonumber(L, 3);
    if (deadline >= 0 && lp_now() >= deadline) {
      lp_spin_lock(&wa->lock);
      wa->waiter = NULL;
      lp_spin_unlock(&wa->lock);
      if (lp_task_disarm(self)) return lua_pushboolean(L, 0), 1;
      worker(L)->yield_kind = LP_YIELD_WAIT; /* a wake is on its way */
      return lua_yieldk(L, 0, ctx, watch_next_k);
    }
    return lp_lib_suspend(L, self, deadline, ctx, watch_next_k);
  }
}

static int watch_next(lua_State *L) {
  lp_watch *wa = check_watch(L);
  double deadline = lp_lib_deadline(L, 2);
  lua_settop(L, 2);
  lua_pushnumber(L, deadline);
  lp_spin_lock(&wa->lock);
  int got = wa->head < wa->tail ? wa->ready[wa->head++] : 0;
  int all = wa->head >= wa->n;
  lp_spin_unlock(&wa->lock);
  if (got) return lua_pushinteger(L, got), 1;
  if (all) return lua_pushnil(L), 1;
  lp_lib_waiting(L, "luapool.as_completed");
  return watch_next_k(L, LUA_OK, 0);
}

static int watch_gc(lua_State *L) {
  lp_watch **ud = luaL_checkudata(L, 1, WATCH_MT);
  lp_watch *wa = *ud;
  if (!wa) return 0;
  *ud = NULL;
  for (int i = 0; i < wa->n; i++) {
    /* Unlinked by us (not by a finish): its reference is ours to drop. If
     * a finish unlinked it first, its fire() drops it. */
    if (lp_task_unwatch(wa->nodes[i].t, &wa->nodes[i].w)) watch_unref(wa);
  }
  watch_unref(wa);
  return 0;
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

static const luaL_Reg future_methods[] = {{"get", fut_get}, {"done", fut_done},
                                          {"ok", fut_ok},   {"cancel", fut_cancel},
                                          {"id", fut_id},   {NULL, NULL}};

static const luaL_Reg core_funcs[] = {{"spawn", l_spawn},
                                      {"wait", l_wait},
                                      {"join", l_join},
                                      {"sleep", l_sleep},
                                      {"yield", l_yield},
                                      {"emit", l_emit},
                                      {"counter", l_counter},
                                      {"self", l_self},
                                      {"_watch", l_watch},
                                      {"_call", l_call},
                                      {"_drop", l_drop},
                                      {"_error", l_error},
                                      {"_now", l_now},
                                      {"_spawn_list", lp_lib_spawn_list},
                                      {NULL, NULL}};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  if (gc) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

int lp_lib_open(lua_State *L) {
  new_class(L, FUTURE_MT, future_methods, fut_gc);
  luaL_getmetatable(L, FUTURE_MT);
  lua_pushcfunction(L, fut_tostring);
  lua_setfield(L, -2, "__tostring");
  lp_worker *w = worker(L);
  w->future_mt = lua_topointer(L, -1);
  w->future_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  static const luaL_Reg counter_methods[] = {
      {"add", counter_add}, {"get", counter_get}, {NULL, NULL}};
  new_class(L, COUNTER_MT, counter_methods, NULL);
  static const luaL_Reg watch_methods[] = {{"next", watch_next}, {NULL, NULL}};
  new_class(L, WATCH_MT, watch_methods, watch_gc);

  lp_lib_map_open(L);

  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  return lp_lib_module(L);
}

int lp_lib_module(lua_State *L) {
  if (luaL_loadbufferx(L, lp_embedded_luapool, lp_embedded_luapool_len, "=luapool.lua", "t") !=
      LUA_OK)
    return lua_error(L);
  luaL_newlib(L, core_funcs);
  lp_sync_register(L);
  lua_call(L, 1, 1);
  return 1;
}

/*
 * spawn.c - luapool.spawn: a new child task of the running task, and where
 * it is queued.
 *
 * The hot path of the engine starts here: l_spawn packs the arguments,
 * lp_spawn_new makes the task and its future, lp_spawn_queue puts it on
 * the spawning worker's own queue (newest first: see sched.c), another
 * pool's queue, or its pool's worker processes. All three are in this file
 * so a spawn makes no call across files but into the core. map spawns its
 * tasks through the same three (libmap.c). In a sequential run (--workers
 * 0) the child runs at its spawn, before the parent goes on.
 *
 * Holding a flood back. A task that spawns faster than its children run
 * would grow its queue without bound (a queued task is some half a
 * kilobyte: its record, packed arguments and report node). Once the queue a
 * spawn lands in holds more than LP_SPAWN_AHEAD unstarted tasks, the
 * spawning task is held: into its worker's own queue it yields, so the
 * worker runs the tasks ahead of it first (sched.c hands a yielded task back
 * after some sixty others, or when there is nothing else); into another
 * pool's injection list, which its own worker does not drain, it pauses on
 * a timer instead, longer the further the list is past the bound. Either
 * way it yields and waits for nothing: it runs again whatever the other
 * tasks do, and each spawn is held at most once. That is why no fork-join
 * tree, however deep, and nothing its tasks wait for can deadlock on the
 * bound; a wait for the queue to shrink would make the spawner's progress
 * hang on what the queued tasks do once they start (spawn and be held in
 * turn, or wait for this very task). Only a task that can yield is held
 * (the test of lp_lib_waiting); elsewhere, and for worker processes (their
 * feeders keep their own queues), spawn goes on as it always did.
 */
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "vm.h"

static int spawn_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return 1; /* the future, left on top before yielding */
}

/* The unstarted tasks a queue may hold before a spawn into it is held back.
 * At about half a kilobyte each, some 16 MB per flooding worker. A fork-join
 * tree's own queue stays far below it (about two tasks per level of depth),
 * so the bound never touches one; and thieves, who take at most 32 tasks at
 * a time, always find work in a held queue. */
#define LP_SPAWN_AHEAD 32768
/* Worker processes need a deeper queue: the spawner shares the cores with
 * them and their feeders, and must never leave them without tasks while
 * it waits for a core (32,768 cost a quarter of the throughput of trivial
 * tasks); still some 60 MB at most. */
#define LP_PLACE_AHEAD (4 * LP_SPAWN_AHEAD)

/* A spawn into another pool past the bound pauses its task for HOLD_PAUSE
 * seconds, doubled for every HOLD_STEP tasks further past it, up to 2^10
 * times: however slowly that pool runs its tasks, the list stops growing
 * within some ten steps past the bound. */
#define HOLD_PAUSE 0.001
#define HOLD_STEP 4096

/* A held spawn goes on: ctx is 1 after a pause (its timer is removed). */
static int held_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = lp_worker_of(L)->current;
  if (ctx) lp_lib_resumed(L, self);
  lp_lib_check_cancelled(L, self);
  return 1; /* the future, left on top before yielding */
}

/* Holds back the running task, whose spawn left `queued` tasks in the queue
 * of its new child (see the top of this file). Does not return. */
static int hold(lua_State *L, lp_task *self, lp_task *child, int dest, long queued) {
  lp_worker *w = lp_worker_of(L);
  if (dest == LP_SPAWN_OWN) {
    lp_pool_yield_current(w);
    return lua_yieldk(L, 0, 0, held_k);
  }
  if (dest == LP_SPAWN_PLACE) { /* woken as the processes take tasks (place.h) */
    lp_task_arm(self);
    if (lp_place_hold(w->eng, child->pool, self, LP_PLACE_AHEAD))
      return lp_lib_suspend(L, self, -1, 1, held_k);
    lp_task_disarm(self); /* drained meanwhile */
    return 1;
  }
  long steps = (queued - LP_SPAWN_AHEAD) / HOLD_STEP;
  double pause = HOLD_PAUSE * (double)(1L << (steps < 10 ? steps : 10));
  lp_task_arm(self);
  return lp_lib_suspend(L, self, lp_now() + pause, 1, held_k);
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

void lp_spawn_options(lua_State *L, int idx, const char *what, spawn_opts *o) {
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
      if (eng->up)
        lp_lib_error(L, "%s: no pool named '%s' (a task in %s spawns into its own pool: %s)", what,
                     asked, eng->up->where, names);
      lp_lib_error(L, "%s: no pool named '%s' (pools: %s)", what, asked, names);
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
 * queues it (lp_spawn_queue). NULL when out of memory. */
lp_task *lp_spawn_new(lua_State *L, lp_task *self, int fn, const spawn_opts *o, lp_buf *args) {
  lp_worker *w = lp_worker_of(L);
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
int lp_spawn_dest(lua_State *L, lp_task *t) {
  luapool *eng = lp_worker_of(L)->eng;
  if (eng->pools[t->pool].place) return LP_SPAWN_PLACE;
  if (t->pool != eng->sched.wq[lp_worker_of(L)->index].pool) return LP_SPAWN_INJECT;
  return LP_SPAWN_OWN;
}

/* Queues t at dest. Returns how many tasks wait unstarted in the queue it
 * joined (for a place: not yet sent to a process), or -1 when out of
 * memory (then the task has failed). */
static long queue(lua_State *L, lp_task *t, int dest) {
  lp_worker *w = lp_worker_of(L);
  luapool *eng = w->eng;
  long n;
  if (dest == LP_SPAWN_PLACE)
    n = lp_place_push(eng, t); /* its tasks not yet sent to a process */
  else if (dest == LP_SPAWN_INJECT)
    n = lp_sched_inject(&eng->sched, t); /* another pool's threads */
  else
    n = lp_sched_push(&eng->sched, w->index, t);
  /* Out of memory in the queue: this child can never run. */
  if (n < 0) lp_task_finish(t, LP_TASK_FAILED, NULL);
  return n;
}

/* Queues a task made by lp_spawn_new (not in a sequential run).
 * 0, or -1 when out of memory (then the task has failed). */
int lp_spawn_queue(lua_State *L, lp_task *t, int dest) { return queue(L, t, dest) < 0 ? -1 : 0; }

static int l_spawn(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.spawn");
  lp_worker *w = lp_worker_of(L);
  luapool *eng = w->eng;
  int base = 1;
  spawn_opts o = {self->pool, self->priority, eng->cfg.task_timeout, eng->cfg.retries};
  if (lua_type(L, 1) == LUA_TTABLE) {
    lp_spawn_options(L, 1, "luapool.spawn", &o);
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
  lp_task *t = lp_spawn_new(L, self, fn, &o, &args);
  if (!t) return luaL_error(L, "luapool.spawn: out of memory");
  if (!eng->inline_mode) {
    int dest = lp_spawn_dest(L, t);
    long queued = queue(L, t, dest);
    if (queued < 0) return luaL_error(L, "luapool.spawn: out of memory");
    if (queued > (dest == LP_SPAWN_PLACE ? LP_PLACE_AHEAD : LP_SPAWN_AHEAD) && L == self->co &&
        lua_isyieldable(L))
      return hold(L, self, t, dest, queued);
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

void lp_spawn_register(lua_State *L) {
  lua_pushcfunction(L, l_spawn);
  lua_setfield(L, -2, "spawn");
}

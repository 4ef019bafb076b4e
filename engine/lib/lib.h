/*
 * lib.h - what the files of the task-side module (engine/lib/) share: the
 * waiting machinery, spawning, futures, and each file's registration.
 *
 * A call that waits: checks its condition; if unmet, arms the running task
 * (lp_task_arm), registers whatever will call lp_task_wake on it, and
 * returns lp_lib_suspend(...) with a continuation k. The continuation first
 * calls lp_lib_resumed, then lp_lib_check_cancelled, then checks its
 * condition again (a wake may be spurious), looping the same way.
 */
#ifndef LP_LIB_H
#define LP_LIB_H

#include <lauxlib.h>
#include <lua.h>

#include "pool.h"
#include "task.h"

/* Raises "WHERE: message", WHERE being the file:line of the user's code
 * that made the call: the first frame outside luapool's Lua layer. */
int lp_lib_error(lua_State *L, const char *fmt, ...);

/* The task running in L, or raises an error naming `what`. Inline: spawn
 * and get (spawn.c, future.c) call it on every call. */
static inline lp_task *lp_lib_running(lua_State *L, const char *what) {
  lp_worker *w = lp_worker_of(L);
  if (!w || !w->current) {
    luaL_error(L, "%s: only a running task can do this", what);
    return NULL; /* not reached: luaL_error does not return */
  }
  return w->current;
}

/* The same, and checks that it can suspend here (raises otherwise). */
static inline lp_task *lp_lib_waiting(lua_State *L, const char *what) {
  lp_task *self = lp_lib_running(L, what);
  if (L != self->co || !lua_isyieldable(L))
    lp_lib_error(L,
                 "%s: cannot wait here: inside a coroutine of the task's own or a C function "
                 "that cannot yield (such as a table.sort comparator)",
                 what);
  return self;
}

/* Raises "task cancelled" if the task or an ancestor was cancelled. */
void lp_lib_check_cancelled(lua_State *L, lp_task *self);
/* Yields the armed task, registering `deadline` (lp_now() seconds, or < 0
 * for none) as a wake-up; k runs when it is resumed. With --workers 0 and
 * no deadline it raises a deadlock error instead. Does not return. */
int lp_lib_suspend(lua_State *L, lp_task *self, double deadline, lua_KContext ctx, lua_KFunction k);
/* Undoes what lp_lib_suspend registered. */
void lp_lib_resumed(lua_State *L, lp_task *self);
/* The deadline for an optional timeout argument at idx: -1 if none. */
double lp_lib_deadline(lua_State *L, int idx);

/* Raises "what: argument argn: err" for the task function at stack index
 * idx, naming the variable the user passed when it was a nil one. */
int lp_lib_fn_error(lua_State *L, const char *what, int idx, int argn, const char *err);

/* ---- spawn.c ---- */

/* Spawn options (luapool.spawn's table, map's other options). */
typedef struct spawn_opts {
  int pool;
  double priority;
  double timeout; /* seconds; 0: none */
  int retries;
} spawn_opts;

/* Reads the options table at idx into o (whose fields hold the defaults);
 * raises errors naming `what`. */
void lp_spawn_options(lua_State *L, int idx, const char *what, spawn_opts *o);
/* Pushes a future for a new child of self with the packed args (taken).
 * NULL when out of memory. The task is not queued yet. */
lp_task *lp_spawn_new(lua_State *L, lp_task *self, int fn, const spawn_opts *o, lp_buf *args);
enum { LP_SPAWN_OWN, LP_SPAWN_INJECT, LP_SPAWN_PLACE };
/* Where a new task goes (not in a sequential run): one of LP_SPAWN_*. */
int lp_spawn_dest(lua_State *L, lp_task *t);
/* Queues it there: 0, or -1 when out of memory (the task has failed). */
int lp_spawn_queue(lua_State *L, lp_task *t, int dest);
/* Adds spawn to the module table at the top of L. */
void lp_spawn_register(lua_State *L);

/* ---- future.c ---- */

/* A future: a Lua userdata holding a reference to its task (NULL once
 * collected). Its metatable is the worker's (w->future_mt). */
typedef struct lp_future {
  lp_task *t;
} lp_future;

/* The future at idx, or NULL if that is not one. */
lp_future *lp_future_test(lua_State *L, int idx);
/* Opens the task-side module in a worker's state (the engine's open_lib). */
int lp_lib_open(lua_State *L);
/* Pushes the module's table alone, as lp_lib_open builds it, in any state
 * (no worker needed): what `luapool check` takes the module's names from.
 * Its functions must not be called there. Raises on out of memory. */
int lp_lib_module(lua_State *L);

/* Makes the future metatable of a worker's state (lp_lib_open). */
void lp_future_open(lua_State *L);
/* Adds wait, _get and _drop to the module table at the top of L. */
void lp_future_register(lua_State *L);

/* ---- waits.c: join, sleep, yield, the watcher of as_completed ---- */

void lp_waits_open(lua_State *L);
void lp_waits_register(lua_State *L);

/* ---- emit.c: emit, print, self ---- */

/* Sets the global print of a worker's state to the task's print. */
void lp_emit_open(lua_State *L);
void lp_emit_register(lua_State *L);

/* ---- counter.c (its slots: lp_sync_counter, sync.h) ---- */

void lp_counter_open(lua_State *L);
void lp_counter_register(lua_State *L);

/* ---- libmap.c: core._spawn_list and the metatables it uses ---- */

int lp_lib_spawn_list(lua_State *L);
void lp_lib_map_open(lua_State *L);
/* Pushes collect(futures, cs, n, get, drop) of scripts/map.lua: a map's
 * results in list order, for the task side and the host module alike (any
 * state; no worker needed). */
void lp_lib_map_collect(lua_State *L);

/* Raises an error for a shared object (counter, channel, sequencer) asked
 * for inside a worker process, where it could not be shared with the rest
 * of the run. */
void lp_lib_not_in_process(lua_State *L, const char *what);

#endif

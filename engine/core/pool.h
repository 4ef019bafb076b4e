/*
 * pool.h - worker threads, each with its own Lua state, and what they run.
 */
#ifndef LP_POOL_H
#define LP_POOL_H

#include <pthread.h>
#include <stdint.h>

#include <lua.h>

#include "pack.h"
#include "stats.h"
#include "task.h"
#include "timer.h"

struct luapool;
struct lp_task;

/* Why a task's coroutine yielded. A yield we did not make (a bare
 * coroutine.yield() in the task) counts as luapool.yield(). */
enum { LP_YIELD_OTHER = 0, LP_YIELD_WAIT, LP_YIELD_AGAIN };

typedef struct lp_worker {
  struct luapool *eng;
  int index;
  pthread_t thread;
  int started;             /* the thread exists and must be joined */
  int start_rc;            /* under host_lock: 0 starting, 1 ready, else LUAPOOL_E* */
  lua_State *L;            /* this worker's state; tasks run in its coroutines */
  size_t mem_used;         /* bytes allocated by L (counting allocator) */
  size_t mem_limit;        /* 0: none */
  int limit_on;            /* the limit applies: inside lua_resume or the script's load,
                              where a memory error is caught (vm.c) */
  struct lp_task *current; /* the task running now, NULL between tasks */
  /* The coroutine inside lua_resume, for a cancel of the whole run from
   * another thread (lp_pool_stop_lua); `hooking` counts such threads at work
   * on it, and a resume that returns waits for them: the coroutine outlives
   * their lua_sethook. */
  _Atomic(lua_State *) running;
  _Atomic int hooking;
  lp_timers timers;
  lp_task_cache cache; /* task records this worker allocates */
  int fn_by_id_ref;    /* registry refs of the state's caches (vm.c) */
  int id_by_name_ref;
  int future_mt_ref;     /* registry ref of the future metatable (lib/future.c) */
  const void *future_mt; /* and its address, to recognise futures */
  /* Coroutine pool: slot i of the registry table `cos` anchors cos_ptr[i]. */
  int cos_ref;
  lua_State **cos_ptr;
  struct lp_task **cos_task; /* the task whose body runs (or waits) in each */
  int *cos_free;             /* slots holding an idle coroutine */
  int nfree;
  int *cos_empty; /* slots with no coroutine */
  int nempty;
  int ncos; /* slots in use or idle */
  int cap;
  int nlive;           /* coroutines belonging to unfinished tasks */
  int room_waits;      /* of those, waiting for room for their records (lib/emit.c) */
  int yield_kind;      /* LP_YIELD_*: why the running task yielded */
  int inline_depth;    /* tasks being run inline by get(), nested */
  const void *last_fn; /* the function value spawn saw last, and its id */
  int last_fn_id;
  lp_buf result;   /* the running task's packed return values */
  lp_wstats stats; /* counters and trace events, owner-written (stats.h) */
  char *errmsg;    /* why start-up failed; malloc'd, freed by lp_pool_free */
} lp_worker;

/* Creates every worker's state, loads the script into each and starts the
 * threads (none in inline mode). Returns 0 once all are alive, or an
 * LUAPOOL_E* code with the engine's error message set. */
int lp_pool_start(struct luapool *eng);
/* Stops and joins the threads, closes the states. */
void lp_pool_stop(struct luapool *eng);
/* Frees what is left of the workers (their task caches), last. */
void lp_pool_free(struct luapool *eng);

/* Inline mode: runs tasks on the calling (host) thread until nothing is
 * runnable, delivering records after each task and then calling `between`
 * (may be NULL): the layer that waits (api/) passes its tick, which samples
 * the figures and calls the progress callback (observe/figures.c), so the
 * core calls no layer above it. Returns 0, or LUAPOOL_EDEADLOCK if tasks
 * remain suspended with nothing that could wake them. */
int lp_pool_run_inline(struct luapool *eng, void (*between)(struct luapool *eng));

/* The worker whose state L belongs to, and the task it runs. */
static inline lp_worker *lp_worker_of(lua_State *L) { return *(lp_worker **)lua_getextraspace(L); }

/* Inline mode, when the spawning task cannot yield: runs tasks on this
 * thread, nested, until t has finished. */
void lp_pool_run_nested(lp_worker *w, struct lp_task *t);

/* The body of every task: calls w->current's function with its arguments
 * and packs the results into w->result. Runs as a coroutine's body, or
 * under lua_pcallk for a task run inline (lib/future.c). */
int lp_pool_task_entry(lua_State *L);

/* Raises the timeout error of `t` in L (from the hook or a wait). */
int lp_pool_timed_out(lua_State *L, struct lp_task *t);

/* The run is being cancelled: Lua that runs now on any worker (a task
 * spinning in pure Lua included) stops at its next instruction, through
 * the count hook. Any thread. */
void lp_pool_stop_lua(struct luapool *eng);

/* A deadlock: writes into buf (size n) a line per task waiting with
 * nothing to wake it, naming the task and the call it waits in. Only while
 * lp_sched_stalled holds: the workers sleep, their states are still.
 * Returns how many tasks wait. */
int lp_pool_describe_waits(struct luapool *eng, char *buf, size_t n);
/* And then: wakes every such task (the run is being cancelled: each ends
 * as cancelled where it waits). Same conditions. */
void lp_pool_wake_waits(struct luapool *eng);

/* Requeues the running task of w to run again after other ready tasks. */
void lp_pool_yield_current(lp_worker *w);

#endif

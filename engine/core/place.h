/*
 * place.h - the seam: where tasks run other than on this process's worker
 * threads, and what an engine that serves another must tell it.
 *
 * The core knows two outside parties, and of each only the table below:
 *
 * - A place (lp_place) runs the tasks of a pool away from the engine's
 *   threads: worker processes (engine/procs/) today, a broker next. The
 *   layer that opens the engine (api/) attaches one to each pool that asks
 *   for it (eng->pools[i].place) before the engine starts; from then on the
 *   core calls only these functions. A task a place holds is `away`; its
 *   outcome comes back through lp_task_finish_away, the one way an away
 *   task finishes, whichever place ran it.
 *
 * - An uplink (lp_uplink, eng->up) is set when this engine runs tasks for
 *   an engine upstream (inside a worker process; a broker's worker next).
 *   The core tells it what the engine upstream must hear: a root began, a
 *   root's subtree ended, a worker has nothing to do, a counter's round
 *   trip, the trace at close. Records reach it through the report's sinks
 *   (report.h), stamped with their root (lp_record.root) when eng->up is set.
 *   Tasks it hands upstream to share the load are away too: their place is
 *   the uplink.
 *
 * Hot paths test a field (eng->pools[t->pool].place, eng->up) and call
 * through a table only when it is set: a run on threads alone pays one
 * predictable branch, never an indirect call.
 */
#ifndef LP_PLACE_H
#define LP_PLACE_H

#include <stdint.h>

struct luapool;
struct lp_task;
struct lua_State;
struct lp_trace_ev;
struct luapool_worker_stats;

/* What a place has counted of the tasks it ran, summed over places by
 * lp_places_totals: subtasks made and finished there (the tasks sent to it
 * are the engine's own), tasks queued (unsent or waiting there), running,
 * bodies run, failed and retried, the deepest level and their CPU seconds. */
typedef struct lp_place_totals {
  uint64_t made, fin, run, failed, retried;
  long queued, running;
  int depth;
  double cpu;
} lp_place_totals;

typedef struct lp_place lp_place;

typedef struct lp_place_ops {
  /* Starts the place and waits until it can run tasks: 0, or an LUAPOOL_E*
   * code with the engine's message set (lp_engine_error). */
  int (*start)(lp_place *p);
  /* Ends it and frees it (the engine is closing): every task it held has
   * finished or been cancelled. */
  void (*stop)(lp_place *p);
  /* Takes a new task of its pool (any thread): how many of its tasks now
   * wait to be sent (a spawn flood is held back by it: lib/spawn.c), or -1
   * when out of memory (the task is then the caller's, unfinished). */
  int (*push)(lp_place *p, struct lp_task *t);
  /* A spawn flood (lib/spawn.c): when more than `bound` of its tasks wait
   * to be sent, keeps t, armed (lp_task_arm), to wake it (lp_task_wake)
   * once half of them have gone or the run is cancelled, and returns 1;
   * else 0. May be NULL: never held. */
  int (*hold)(lp_place *p, struct lp_task *t, long bound);
  /* t, which it holds, is cancelled (any thread). */
  void (*cancel)(lp_place *p, struct lp_task *t);
  /* The run is cancelled: tasks not begun are cancelled, the rest stop. */
  void (*cancel_all)(lp_place *p);
  /* 1 when it holds no task whose end could still wake a task of the
   * engine's (the deadlock judge asks before it judges). */
  int (*idle)(lp_place *p);
  /* Adds its figures to *sum. */
  void (*totals)(lp_place *p, lp_place_totals *sum);
  /* Fills out[0 .. n-1] with its worker threads; returns how many it has. */
  int (*worker_stats)(lp_place *p, struct luapool_worker_stats *out, int n);
} lp_place_ops;

/* A place's implementation embeds this first. */
struct lp_place {
  const lp_place_ops *ops;
};

typedef struct lp_uplink lp_uplink;

typedef struct lp_uplink_ops {
  /* A worker thread began the body of root (a task with no parent here). */
  void (*root_started)(lp_uplink *u, struct lp_task *root);
  /* root's subtree has ended; called before the engine lets root go. */
  void (*root_done)(lp_uplink *u, struct lp_task *root);
  /* A worker thread is about to sleep: a chance to ask for more work. */
  void (*idle)(lp_uplink *u);
  /* counter:add(delta) (add = 1) or counter:get() for the counter called
   * `name` (an interned name id): asks upstream and suspends the running
   * task until it answers; returns as a lua_CFunction does. */
  int (*counter)(lp_uplink *u, struct lua_State *L, int name, int64_t delta, int add);
  /* t, a task handed upstream (away), is cancelled (any thread). */
  void (*cancel)(lp_uplink *u, struct lp_task *t);
  /* At close, with --trace: one event of worker thread `thread` (from 1),
   * its times in lp_stats_ns() terms, and its function's name. */
  void (*trace)(lp_uplink *u, int thread, const struct lp_trace_ev *e, const char *fn);
} lp_uplink_ops;

/* An uplink's implementation embeds this first. */
struct lp_uplink {
  const lp_uplink_ops *ops;
  /* How messages name where a task runs: "a worker process". Used where a
   * feature cannot cross to the engine upstream (a channel, a pool of the
   * engine's). */
  const char *where;
  /* 1: os.exit stays in tasks' states (the process is contained). */
  int keeps_exit;
};

/* The engine's side of the seam (place.c): every place of the engine. */
/* Hands a new task to its pool's place: how many wait to be sent there,
 * or -1 when out of memory. */
int lp_place_push(struct luapool *eng, struct lp_task *t);
/* The running task `self` spawned into `pool`'s place: the place's hold. */
int lp_place_hold(struct luapool *eng, int pool, struct lp_task *self, long bound);
/* An away task is cancelled: tells whoever holds it. */
void lp_place_cancel(struct luapool *eng, struct lp_task *t);
int lp_places_start(struct luapool *eng);
void lp_places_stop(struct luapool *eng);
void lp_places_cancel_all(struct luapool *eng);
int lp_places_idle(struct luapool *eng);
void lp_places_totals(struct luapool *eng, lp_place_totals *out);
int lp_places_worker_stats(struct luapool *eng, struct luapool_worker_stats *out, int n);

#endif

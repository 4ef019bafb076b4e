/*
 * engine.h - the body of the opaque `luapool` handle, shared by the modules,
 * and the engine object's functions (engine.c).
 */
#ifndef LP_ENGINE_H
#define LP_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "luapool.h"
#include "names.h"
#include "place.h"
#include "report.h"
#include "sched.h"
#include "stats.h"
#include "task.h"

struct lp_worker;

/* A pool: where tasks run. Pool 0 is "main" (--workers or --processes);
 * --pool NAME=threads:N | processes:N[xT] adds more. */
typedef struct lp_pooldef {
  char *name;
  int processes;    /* worker processes; 0 for a pool of threads */
  int n;            /* threads of a thread pool */
  int threads;      /* threads in each worker process */
  int first_worker; /* the engine's worker threads serving it */
  int nworkers;
  lp_place *place; /* where its tasks run when not on the engine's threads (place.h) */
  int roots_away;  /* its roots run at its place too (a broker), not on an engine thread */
} lp_pooldef;

typedef enum lp_engine_phase {
  LP_PHASE_OPEN = 0, /* configured, no script yet */
  LP_PHASE_RUNNING,  /* script loaded, workers alive */
  LP_PHASE_CLOSING
} lp_engine_phase;

struct luapool {
  char *broker, *broker_run; /* cfg.broker's and cfg.broker_run's copies */
  luapool_config cfg;
  lp_engine_phase phase;
  int nworkers;    /* threads; 1 in inline mode (the host's thread) */
  int inline_mode; /* cfg.workers == 0 */
  struct lp_worker *workers;
  lp_sched sched;
  lp_names names;
  lp_report report;

  char *script; /* the script's source, loaded by every worker */
  size_t script_len;
  char *chunkname; /* "@path" or the name given to load_string */
  struct {
    char *name;
    luapool_open_fn open;
  } * modules; /* host C modules preloaded in every worker state */
  int nmodules;
  char **defined; /* sorted names of the script's task functions */
  int ndefined;

  _Atomic uint64_t next_id;
  _Atomic uint64_t cancel_epoch; /* bumped by every cancel: see lp_task_cancelled */
  _Atomic int stopping;          /* a cancel of the whole run was asked */
  _Atomic int interrupted;       /* set by luapool_interrupt (a signal handler) */
  _Atomic int unawaited_failures;

  /* Host side: roots in flight, guarded by host_lock. */
  pthread_mutex_t host_lock;
  pthread_cond_t host_cond;
  long live_roots;
  int workers_go;  /* 1: workers may run, -1: start-up failed, leave */
  int root_is_run; /* the CLI's main: the run itself, which --task-timeout and
                      --retries do not limit (they apply to what it spawns) */
  int host_waiting;

  lp_pooldef *pools; /* pools[0] is "main" */
  int npools;
  uint64_t proc_gens; /* ranges of task ids handed to places (each worker process has one) */
  lp_uplink *up;      /* set when this engine runs tasks for one upstream (place.h) */

  struct lp_sync *sync; /* named channels and sequencers (sync.c, channel.c, sequencer.c) */

  /* Statistics: recorded by core/stats.c (and each worker's lp_wstats),
   * summed from the workers when asked by observe/figures.c. */
  _Atomic int max_depth;
  lp_stats stats;
  struct lp_trace *trace; /* --trace (observe/trace.c): the origin, samples and
                             worker processes' events; NULL without */

  struct luapool_future *futures; /* host-only: live futures, detached at close (future.c) */
  struct luapool *next_open;      /* the list of open engines (engine.c) */
  /* Called by the host's wait about every millisecond (stats and progress:
   * set by the layer that opens the engine); NULL: nothing. */
  void (*tick)(struct luapool *eng);
  /* Opens the task-side library, `require "luapool"` in a worker's state
   * (lib/: set by the layer that opens the engine); NULL: none. */
  int (*open_lib)(struct lua_State *L);

  char *errmsg; /* the last error, whole (a load error can be long); malloc'd */
};

/* ---- the engine object (engine.c) ---- */

/* Makes an engine from a configuration and puts it on the list of open
 * engines: 0, LUAPOOL_EINVAL (a bad configuration) or LUAPOOL_ENOMEM. */
int lp_engine_new(const luapool_config *cfg, luapool **out);

/* Whether lp is an engine that is open (not closed, not a stray pointer). */
int lp_engine_is_open(const luapool *lp);

/* Takes eng off the list of open engines; 1 if it was there. */
int lp_engine_unlist(luapool *eng);

/* Sets the handle's error message (printf-style) and returns err. */
int lp_engine_error(luapool *eng, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The index of the pool called name, or -1. */
int lp_engine_pool(luapool *eng, const char *name, size_t len);

/* Before the script: adds a pool (spec "threads:N", "processes:N" or
 * "processes:NxT") or a host C module: 0 or an error with the message set. */
int lp_engine_add_pool(luapool *eng, const char *name, const char *spec);
int lp_engine_add_module(luapool *eng, const char *name, luapool_open_fn open);

/* Loads the script and starts the workers (and worker processes); returns
 * when every one of them is ready: 0 or an error with the message set. */
int lp_engine_load(luapool *eng, const char *chunk, size_t len, const char *chunkname);

/* Whether the script defines a task function called name. */
int lp_engine_defines(luapool *eng, const char *name);

/* Worker start-up (pool.c), under host_lock. A worker thread reports rc (0:
 * ready, else LUAPOOL_E*) into *start_rc and waits for the host's go:
 * returns 1 to run, 0 to leave. The host waits for a worker's report and
 * returns it (1: ready); then lets every worker run (go = 1) or leave
 * (go = -1). */
int lp_engine_worker_started(luapool *eng, int *start_rc, int rc);
int lp_engine_worker_ready(luapool *eng, const int *start_rc);
void lp_engine_workers_go(luapool *eng, int go);

/* Submits a root task of function `fn` with packed arguments (taken: args
 * is left empty on every path) and the given options (NULL: defaults).
 * With `root`, stores a reference on the root task there (the caller
 * unrefs it), and the task wakes the host's wait when it finishes; the
 * futures of the public API and of the Lua host module are made so. */
int lp_engine_submit(luapool *eng, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     lp_task **root);

/* n roots more are in flight (a worker process's engine takes its roots in
 * batches). */
void lp_engine_add_roots(luapool *eng, long n);

/* Called when a root's subtree completes (root may be NULL: released). */
void lp_engine_root_done(luapool *eng, lp_task *root);

/* Reports a failed task that nobody awaited. */
void lp_engine_unawaited_failure(luapool *eng, lp_task *t);

/* Cancels the whole run (any thread; no handle check): tasks not begun are
 * cancelled, running ones stop where they are. */
void lp_engine_cancel(luapool *eng);

/* Runs the host's side of the run until every root has completed, or, with
 * `until`, until until(ud) returns 1 (asked under host_lock, which a
 * finishing root's waiter takes), or the timeout (< 0: none): delivers
 * records and failure reports, turns an interrupt into a cancel, judges
 * deadlocks, and in inline mode runs the tasks itself. 0,
 * LUAPOOL_ETIMEDOUT, LUAPOOL_EDEADLOCK, LUAPOOL_EINTERRUPTED or
 * LUAPOOL_ETASKFAIL (a failure nobody awaited). */
int lp_engine_wait(luapool *eng, double timeout, int (*until)(void *ud), void *ud);

/* Closing, in this order: drain (roots still in flight are cancelled and
 * waited for), stop (the workers and worker processes are joined), free
 * (everything the engine owns, and eng itself). */
void lp_engine_drain(luapool *eng);
void lp_engine_stop(luapool *eng);
void lp_engine_free(luapool *eng);

#endif

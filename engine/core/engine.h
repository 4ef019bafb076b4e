/*
 * engine.h - the body of the opaque `luapool` handle, shared by the modules.
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
  lp_place *place;  /* where its tasks run when not on the engine's threads (place.h) */
} lp_pooldef;

typedef enum lp_engine_phase {
  LP_PHASE_OPEN = 0, /* configured, no script yet */
  LP_PHASE_RUNNING,  /* script loaded, workers alive */
  LP_PHASE_CLOSING
} lp_engine_phase;

struct luapool {
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

  struct lp_counters *counters; /* named counters (lib/counter.c): made on first use */

  lp_pooldef *pools; /* pools[0] is "main" */
  int npools;
  uint64_t proc_gens;   /* ranges of task ids handed to places (each worker process has one) */
  lp_uplink *up;        /* set when this engine runs tasks for one upstream (place.h) */

  struct lp_sync *sync; /* named channels and sequencers (sync.c, channel.c, sequencer.c) */

  /* Statistics: recorded by core/stats.c (and each worker's lp_wstats),
   * summed from the workers when asked by observe/figures.c. */
  _Atomic int max_depth;
  lp_stats stats;
  struct lp_trace *trace; /* --trace (observe/trace.c): the origin, samples and
                             worker processes' events; NULL without */

  struct luapool_future *futures; /* host-only: live futures, detached at close */
  struct luapool *next_open;      /* the list of open engines (api.c) */

  char *errmsg; /* the last error, whole (a load error can be long); malloc'd */
};


/* Sets the handle's error message (printf-style) and returns err. */
int lp_engine_error(luapool *eng, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Called when a root's subtree completes (root may be NULL: released). */
void lp_engine_root_done(luapool *eng, lp_task *root);

/* Whether lp is an engine that is open (not closed, not a stray pointer). */
int lp_engine_is_open(const luapool *lp);

/* The index of the pool called name, or -1. */
int lp_engine_pool(luapool *eng, const char *name, size_t len);

/* Reports a failed task that nobody awaited. */
void lp_engine_unawaited_failure(luapool *eng, lp_task *t);

/* Submits a root task of function `fn` with packed arguments (taken: args
 * is left empty on every path) and the given options (NULL: defaults); with
 * `out`, makes a future. The Lua host module (luamod.c) submits through
 * here. */
int lp_engine_submit(luapool *eng, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     struct luapool_future **out);

/* Waits until one of the futures fs[0 .. n-1] (of engine eng) is done:
 * 0, LUAPOOL_ETIMEDOUT, LUAPOOL_EDEADLOCK (inline mode: none can finish),
 * LUAPOOL_EINTERRUPTED. Records are delivered meanwhile. */
int lp_engine_wait_any(luapool *eng, struct luapool_future *const *fs, int n, double timeout);

/* procs/proc.c still calls the counters' storage by its old name; its home
 * is lib/counter.c now (counter.h). Remove both lines when the merge
 * renames proc.c's call to lp_counter_slot. */
_Atomic int64_t *lp_counter_slot(luapool *eng, int name_id);
#define lp_engine_counter lp_counter_slot

#endif

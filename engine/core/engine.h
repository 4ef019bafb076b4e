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
  struct lp_procs *procs; /* a process pool's processes (proc.c) */
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

  /* Named atomic counters shared by every task: counters[id] for name id. */
  pthread_mutex_t counters_lock;
  _Atomic int64_t **counters; /* blocks of LP_COUNTER_BLOCK, indexed by name id */
  int ncounter_blocks;

  lp_pooldef *pools; /* pools[0] is "main" */
  int npools;
  uint64_t proc_gens;   /* worker processes started: each gets its own range of task ids */
  struct lp_link *link; /* inside a worker process: the pipe to the engine (procworker.c) */

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

#define LP_COUNTER_BLOCK 256

/* The program run as a worker process (`luapool __worker`); the luapool
 * binary points it at itself. NULL (a host program): exe.c finds it. */
extern const char *lp_worker_exe;

/* Writes the path of the program to run as a worker process into out
 * (exe.c): LUAPOOL_WORKER_EXE, else lp_worker_exe, else the luapool binary
 * installed with the library that holds the engine. */
void lp_exe_worker(char *out, size_t size);

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

/* The counter slot for a name id, created on first use. */
_Atomic int64_t *lp_engine_counter(luapool *eng, int name_id);

#endif

/*
 * luapool.h - run Lua task scripts on a pool of workers from a C program.
 *
 * A luapool engine owns N worker threads, each with its own Lua 5.4 state
 * that has loaded the same task script. The host submits root tasks by the
 * name of a global function of the script; tasks spawn subtasks at any depth;
 * records made by luapool.emit() and print() inside tasks reach the host, in
 * the configured report order, through a callback that runs on the host's
 * own thread while it waits.
 *
 *   luapool_config cfg;
 *   luapool_config_init(&cfg);
 *   cfg.workers = 4;
 *   cfg.on_record = my_printer;
 *   luapool *lp;
 *   if (luapool_open(&cfg, &lp) != 0) ...
 *   if (luapool_load_file(lp, "tasks.lua") != 0) puts(luapool_errmsg(lp));
 *   const char *args[] = {"10"};
 *   luapool_submit(lp, "main", 1, args);
 *   luapool_wait(lp, -1);
 *   luapool_close(lp);
 *
 * Every function returns 0 or a negative LUAPOOL_E* code; luapool_errmsg()
 * gives the details of the last failure on that handle.
 */
#ifndef LUAPOOL_H
#define LUAPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LUAPOOL_VERSION "0.1.0"

typedef struct luapool luapool;

/* Error codes: X(name, value, description). */
#define LUAPOOL_ERRNO_MAP(X)                                \
  X(INVAL, -1, "invalid argument")                          \
  X(NOMEM, -2, "out of memory")                             \
  X(SCRIPT, -3, "the script could not be loaded")           \
  X(NOTASK, -4, "no such task function")                    \
  X(STATE, -5, "not allowed in the engine's current state") \
  X(TIMEDOUT, -6, "timed out")                              \
  X(TASKFAIL, -7, "a task failed")                          \
  X(SYS, -8, "a system call failed")                        \
  X(DEADLOCK, -9, "a wait can never be satisfied")          \
  X(INTERRUPTED, -10, "interrupted")

enum {
#define LP_ERRNO_ENUM(name, value, text) LUAPOOL_E##name = (value),
  LUAPOOL_ERRNO_MAP(LP_ERRNO_ENUM)
#undef LP_ERRNO_ENUM
};

/* The description of an error code. */
const char *luapool_strerror(int err);

/* Report orders (SPEC: --order). */
enum { LUAPOOL_ORDER_TREE = 0, LUAPOOL_ORDER_PRIORITY = 1, LUAPOOL_ORDER_COMPLETION = 2 };

/* Record kinds. */
enum { LUAPOOL_RECORD_EMIT = 0, LUAPOOL_RECORD_PRINT = 1 };

/* One record, valid only during the callback. For PRINT records `text` holds
 * the printed line (without newline). For EMIT records `text` holds the value
 * as text (strings as they are, numbers and booleans as Lua's tostring, tables
 * as JSON) and `value`/`value_len` its packed bytes. */
typedef struct luapool_record {
  int kind;
  uint64_t task;    /* id of the task that made it */
  const char *name; /* that task's function name */
  double priority;
  const char *text;
  size_t text_len;
  const char *value; /* packed value (EMIT only) */
  size_t value_len;
  const char *json; /* with config json_records: the record as one JSON object,
                       {"task":ID,"name":NAME,"priority":P,"value":VALUE} */
  size_t json_len;
} luapool_record;

typedef void (*luapool_record_fn)(void *ud, const luapool_record *rec);
struct luapool_stats;
/* Receives the report of a failed task that nobody awaited: one message
 * with the task's name, id, arguments and traceback. */
typedef void (*luapool_failure_fn)(void *ud, const char *message);

typedef struct luapool_config {
  int workers;         /* worker threads; 0 runs everything inline on the host thread */
  int processes;       /* > 0: this many worker processes instead (workers is then ignored) */
  int threads;         /* worker threads in each worker process; 0 means 1 */
  int order;           /* LUAPOOL_ORDER_* */
  size_t memory_limit; /* bytes per worker Lua state; 0 for none */
  int json_records;    /* fill luapool_record.json */
  double task_timeout; /* seconds any task may run; 0: no limit (spawn option `timeout`) */
  int retries;         /* runs again a failed task this many times (spawn option `retries`) */
  int fail_fast;       /* the first failure that nobody awaited cancels the run */
  luapool_record_fn on_record;
  luapool_failure_fn on_failure; /* NULL: written to stderr */
  void (*on_flush)(void *ud);    /* after each batch of records: a moment to flush output */
  /* Called on the waiting host thread about every progress_interval seconds
   * (0: 0.1) with the run's live figures (see luapool_get_stats). */
  void (*on_progress)(void *ud, const struct luapool_stats *stats);
  double progress_interval;
  /* Writes a Chrome trace-event JSON file here when the engine closes: every
   * slice of every task's execution on its worker, spawn arrows, queue
   * depths. Tracing costs two clock reads per slice; NULL: none. A failure
   * to write it is reported through on_failure. */
  const char *trace_path;
  void *ud; /* passed to the callbacks */
} luapool_config;

/* Fills cfg with the defaults: one worker per CPU, tree order. */
void luapool_config_init(luapool_config *cfg);

/* Creates an engine. *out is set to NULL on failure. */
int luapool_open(const luapool_config *cfg, luapool **out);

/* A Lua C module of the host's: a luaopen_* style function. */
struct lua_State;
typedef int (*luapool_open_fn)(struct lua_State *L);

/* Makes `require "name"` return open()'s module in every worker state, so
 * tasks can call the host's own C functions. Call before loading the
 * script; open runs once per worker state, on that worker's thread. */
int luapool_register_module(luapool *lp, const char *name, luapool_open_fn open);

/* Adds a named pool besides "main": spec is "threads:N", "processes:N" or
 * "processes:NxT" (N processes of T threads). Tasks spawned with the
 * option pool = name run there, and their subtasks with them. Call before
 * loading the script. */
int luapool_add_pool(luapool *lp, const char *name, const char *spec);

/* Loads the task script into every worker and starts the workers. Returns
 * only when every worker is alive with the script loaded. Text chunks only:
 * precompiled chunks are refused. */
int luapool_load_file(luapool *lp, const char *path);
int luapool_load_string(luapool *lp, const char *chunk, size_t len, const char *chunkname);

/* Whether the loaded script defines the task function `name` (a global
 * function, or "table.field" for a function in a global table). */
int luapool_has_function(luapool *lp, const char *name);
/* The sorted names of the script's task functions; returns their count
 * (or a negative error). The array lives as long as the engine. */
int luapool_functions(luapool *lp, const char *const **names);

/* Submits a root task: the global function `fn` of the script, called with
 * argc string arguments. */
int luapool_submit(luapool *lp, const char *fn, int argc, const char *const *argv);

/* Waits until every submitted task and all of its descendants have finished,
 * delivering records through on_record meanwhile. timeout < 0 waits forever.
 * Returns 0, LUAPOOL_ETIMEDOUT, or LUAPOOL_ETASKFAIL when a task failed
 * without being awaited (the run completed nonetheless). */
int luapool_wait(luapool *lp, double timeout);

/* Stops the run as soon as possible: nothing new starts, what has not
 * started is cancelled. Safe to call from another thread (not from a signal
 * handler: use luapool_interrupt there). */
void luapool_cancel(luapool *lp);
/* Async-signal-safe: asks the waiting host to cancel the run. */
void luapool_interrupt(luapool *lp);

/* The run's figures, at any moment, on the host's thread (the one that
 * waits; on_progress gets them there too). Live figures are samples: each
 * counter is exact, but they are read one after another while workers
 * run; once the run has ended they are exact. */
typedef struct luapool_stats {
  uint64_t tasks_run;     /* task bodies started (a retry counts again) */
  uint64_t tasks_failed;  /* tasks that failed (after their retries) */
  uint64_t tasks_retried; /* failed runs started again */
  uint64_t tasks_known;   /* tasks created so far, roots included */
  uint64_t tasks_done;    /* tasks finished: ok, failed or cancelled */
  uint64_t records;       /* records delivered */
  int max_depth;          /* deepest level reached (a root is level 0) */
  int workers;            /* worker threads (1 when everything runs inline) */
  long running;           /* tasks whose code runs on a worker now */
  long queued;            /* tasks waiting for a worker now */
  long suspended;         /* started tasks waiting for something now */
  long peak_queued;       /* highest `queued` seen (sampled by the waiting host) */
  long peak_suspended;    /* highest `suspended` seen (likewise) */
  double wall;            /* seconds since the first submit */
  double cpu;             /* CPU seconds of the process since the first submit */
} luapool_stats;
void luapool_get_stats(luapool *lp, luapool_stats *out);

/* One worker's share of the run. */
typedef struct luapool_worker_stats {
  uint64_t tasks_run; /* task bodies it started */
  double busy;        /* seconds it was not idle since the first submit */
} luapool_worker_stats;
/* Fills out[0 .. n-1] for the first n workers; returns the number of workers
 * (or a negative error). */
int luapool_get_worker_stats(luapool *lp, luapool_worker_stats *out, int n);

/* The message of the last error on this handle ("" if none). */
const char *luapool_errmsg(luapool *lp);

/* Joins every worker and frees everything. Accepts NULL. */
void luapool_close(luapool *lp);

#ifdef __cplusplus
}
#endif
#endif

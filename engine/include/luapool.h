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
 *
 * or, with arguments built in C and the task's result read back:
 *
 *   luapool_values *v = luapool_values_new();
 *   luapool_values_integer(v, 30);
 *   luapool_future *f;
 *   if (luapool_submit_values(lp, "fib", v, &f) == 0 && luapool_future_wait(f, 5.0) == 0)
 *     puts(luapool_future_text(f, NULL));
 *   luapool_future_free(f);
 *   luapool_values_free(v);
 *   luapool_close(lp);
 *
 * Every function returns 0 or a negative LUAPOOL_E* code; luapool_errmsg()
 * gives the details of the last failure on that handle.
 *
 * Threads: one host thread drives a handle (open, load, submit, wait,
 * futures, close); callbacks run on that thread, inside luapool_wait and
 * luapool_future_wait. luapool_cancel may come from any thread,
 * luapool_interrupt from a signal handler.
 *
 * Handles: every function checks its handle against the list of open
 * engines and refuses one that is not open (LUAPOOL_EINVAL; functions
 * without a result ignore it), except luapool_interrupt, which must stay
 * async-signal-safe. A second luapool_close of the same pointer,
 * or a submit after close, is therefore harmless. The one thing no check can
 * catch is a stale pointer whose address a later luapool_open has reused:
 * set your pointer to NULL after closing.
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
  X(INTERRUPTED, -10, "interrupted")                        \
  X(CANCELLED, -11, "the task was cancelled")

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
  const char *value; /* packed value (EMIT only; luapool_cursor reads it) */
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
  /* Bytes of records held in memory (0: 32 MB). Past it, records waiting
   * for their turn (tree order behind a task still running, priority
   * order until the end) go to files under $TMPDIR, and a task whose
   * records wait for the output (on_record is slow) waits for room without
   * holding its worker. A spill file that cannot be written fails the run
   * (LUAPOOL_ESYS) rather than lose records; a host that writes no files
   * itself may want SIGXFSZ ignored, so a file-size limit is an error. */
  size_t hold;
  /* A broker: redis://[user:password@]HOST:PORT[/DB]. The run goes
   * through Redis: its tasks run on every `luapool worker` attached to the
   * broker, and on `workers` threads of this host's own (0: none, the host
   * only submits and reports). NULL: none. */
  const char *broker;
  /* With a broker: seconds a silent worker keeps the run's tasks before
   * another claims them (0: 10). */
  double lease;
  /* With a broker: the id of a run already on it (as `luapool status`
   * lists it) to attach to instead of starting one. The engine's first
   * root then stands for that run's main: its records and its outcome are
   * the run's, delivered in order, once the run's workers have made them.
   * NULL: a new run. */
  const char *broker_run;
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

/* ---- Arguments built from C ----
 *
 * A luapool_values is a list of Lua values under construction, without a
 * lua_State: push the arguments in order. A table is pushed as
 * luapool_values_table(v, narr, nhash) followed by its narr array items
 * (t[1] .. t[narr]) and then nhash key/value pairs, each of which may be a
 * table in turn (nested up to 200 levels). The list is complete when every
 * table has all its items; submitting an incomplete list, or a table key
 * that is nil or NaN, is refused with LUAPOOL_EINVAL. The builder stays the
 * caller's: a submit copies it, so it can be reset and reused. */
typedef struct luapool_values luapool_values;

/* A new empty list, or NULL when out of memory. */
luapool_values *luapool_values_new(void);
/* Empties the list for reuse. */
void luapool_values_reset(luapool_values *v);
/* Accepts NULL. */
void luapool_values_free(luapool_values *v);
/* Each returns 0, LUAPOOL_ENOMEM, or LUAPOOL_EINVAL (v NULL, a nil or NaN
 * where a table key is due, a table nested too deep). Strings are
 * binary-safe and copied. */
int luapool_values_nil(luapool_values *v);
int luapool_values_boolean(luapool_values *v, int b);
int luapool_values_integer(luapool_values *v, int64_t i);
int luapool_values_number(luapool_values *v, double d);
int luapool_values_string(luapool_values *v, const char *s); /* NUL-terminated */
int luapool_values_lstring(luapool_values *v, const char *s, size_t len);
int luapool_values_table(luapool_values *v, uint32_t narr, uint32_t nhash);
/* How many top-level values the list holds. */
int luapool_values_count(const luapool_values *v);

/* ---- Reading values from C ----
 *
 * Packed values (a future's results, a record's `value`) read one at a
 * time, in the order the builder above writes them: a table is followed by
 * its narr array items, then its nhash key/value pairs. */
enum {
  LUAPOOL_TNIL = 0,
  LUAPOOL_TBOOLEAN,
  LUAPOOL_TINTEGER,
  LUAPOOL_TNUMBER,
  LUAPOOL_TSTRING,
  LUAPOOL_TTABLE,
  LUAPOOL_TREF,     /* a table met before (shared, or a cycle): `ref` is its number */
  LUAPOOL_TFUNCTION /* a task function, by its name in `string` */
};

typedef struct luapool_value {
  int type;           /* LUAPOOL_T* */
  int boolean;        /* TBOOLEAN */
  int64_t integer;    /* TINTEGER */
  double number;      /* TNUMBER */
  const char *string; /* TSTRING, TFUNCTION: into the packed bytes, not NUL-terminated */
  size_t len;
  uint32_t narr, nhash; /* TTABLE: the items that follow */
  uint32_t ref;         /* TTABLE: its number (0, 1, ... in order of appearance); TREF */
} luapool_value;

/* Where a reading is; its fields are the library's. */
typedef struct luapool_cursor {
  const char *pos, *end;
  uint32_t tables;
} luapool_cursor;

/* Starts reading packed bytes, after checking them whole: returns the number
 * of top-level values, or LUAPOOL_EINVAL for bytes that are not a
 * well-formed message. */
int luapool_cursor_init(luapool_cursor *c, const char *packed, size_t len);
/* Reads the next value into *v (an output parameter): 0, or LUAPOOL_EINVAL
 * at the end. */
int luapool_cursor_next(luapool_cursor *c, luapool_value *v);

/* ---- Futures ----
 *
 * A future is the host's handle on one submitted root task: wait for it
 * with a timeout, then read its return values (as packed bytes, and as
 * text) or its error message. Futures belong to the host thread. A future
 * may outlive its engine: luapool_close keeps the outcome of every future
 * still alive (or marks it cancelled) and detaches it, so waiting on it,
 * reading it and freeing it stay safe after close. */
typedef struct luapool_future luapool_future;

/* Submits a root task: the script's function `fn` with the values of args
 * (NULL: no arguments). With `out` non-NULL, *out receives a future that
 * the caller frees with luapool_future_free (NULL on failure); with `out`
 * NULL the task runs unwatched, as with luapool_submit. Unknown names give
 * LUAPOOL_ENOTASK, incomplete args LUAPOOL_EINVAL; a failed submit runs
 * nothing and makes no future. */
int luapool_submit_values(luapool *lp, const char *fn, const luapool_values *args,
                          luapool_future **out);

/* The options of one root task: the spawn options of a task. Fill them
 * with luapool_task_opts_init, then set what differs. */
typedef struct luapool_task_opts {
  double priority;  /* lower runs first; default 0 */
  double timeout;   /* seconds the task may run, 0 for no limit; < 0 (default): task_timeout */
  int retries;      /* times a failed task runs again; < 0 (default): the config's retries */
  const char *pool; /* the pool it runs in (luapool_add_pool), its subtasks with it; NULL: "main" */
} luapool_task_opts;

void luapool_task_opts_init(luapool_task_opts *opts);

/* luapool_submit_values with options (NULL: the defaults). A pool that
 * does not exist, or a bad value, gives LUAPOOL_EINVAL. */
int luapool_submit_opts(luapool *lp, const char *fn, const luapool_values *args,
                        const luapool_task_opts *opts, luapool_future **out);

/* Waits until the task has finished (its body: its subtasks may still be
 * running), delivering records meanwhile, like luapool_wait. timeout < 0
 * waits forever. Returns 0 when the task returned, LUAPOOL_ETASKFAIL when it
 * raised an error (the failure then counts as handled: it is not reported
 * as unawaited), LUAPOOL_ECANCELLED, LUAPOOL_ETIMEDOUT (the task goes on),
 * LUAPOOL_EDEADLOCK (it waits for something that can never happen: see
 * luapool_wait) or LUAPOOL_EINVAL (f NULL). */
int luapool_future_wait(luapool_future *f, double timeout);
/* 1 if the task has finished or was cancelled, 0 if not (never waits). */
int luapool_future_done(const luapool_future *f);
/* Cancels the task and its subtree if it has not finished; 1 if it did.
 * The future is then done at once: luapool_future_wait returns
 * LUAPOOL_ECANCELLED without waiting (a task that had begun unwinds on its
 * own; luapool_wait waits for that). */
int luapool_future_cancel(luapool_future *f);
/* The task's id (as luapool_record.task), or 0 for NULL. */
uint64_t luapool_future_id(const luapool_future *f);
/* After luapool_future_wait returned 0: the task's return values in the
 * engine's packed format (engine/pack.h; the Lua module decodes them), valid
 * until the future is freed. Returns the number of values, or a negative
 * error (LUAPOOL_ESTATE when the task has not returned). */
int luapool_future_result(luapool_future *f, const char **packed, size_t *len);
/* After the task finished: its return values as text (tab-separated, each
 * as a record's text: strings as they are, numbers and booleans as tostring,
 * tables as JSON), or its error message (with traceback) if it failed or was
 * cancelled. Valid until the future is freed; NULL if the task has not
 * finished. *len (may be NULL) receives the length. */
const char *luapool_future_text(luapool_future *f, size_t *len);
/* Drops the future. A task that failed and whose future was freed without
 * luapool_future_wait is reported as an unawaited failure. Accepts NULL;
 * freeing the same future twice is an error, as with free(). */
void luapool_future_free(luapool_future *f);

/* Waits until every submitted task and all of its descendants have finished,
 * delivering records through on_record meanwhile. timeout < 0 waits forever.
 * Returns 0, LUAPOOL_ETIMEDOUT, or LUAPOOL_ETASKFAIL when a task failed
 * without being awaited (the run completed nonetheless). With no timeout,
 * LUAPOOL_EDEADLOCK when every worker thread sleeps with no timer to come
 * and nothing queued while tasks still wait: nothing but another host
 * thread could wake them. The waiting tasks are named in luapool_errmsg
 * and the run is cancelled. Runs with worker processes are not judged. */
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
  int workers;            /* the engine's worker threads (1 when everything runs inline) */
  long running;           /* tasks whose code runs on a worker now */
  long queued;            /* tasks waiting for a worker now */
  long suspended;         /* started tasks waiting for something now */
  long peak_queued;       /* highest `queued` seen (sampled by the waiting host) */
  long peak_suspended;    /* highest `suspended` seen (likewise) */
  double wall;            /* seconds since the first submit */
  double cpu;             /* CPU seconds since the first submit, worker processes included */
  uint64_t records_spilled; /* records that waited in spill files (config hold) */
  uint64_t held_peak;       /* most bytes of records held in memory at once */
} luapool_stats;
void luapool_get_stats(luapool *lp, luapool_stats *out);

/* One worker thread's share of the run: the engine's own threads first,
 * then those of each worker process. */
typedef struct luapool_worker_stats {
  uint64_t tasks_run; /* task bodies it started */
  double busy;        /* seconds it was not idle since the first submit */
  int process;        /* 0: a thread of the engine; k: of the k-th worker process */
  int thread;         /* its number in the process (from 1) */
} luapool_worker_stats;
/* Fills out[0 .. n-1] for the first n worker threads; returns how many
 * there are (or a negative error). A worker process's figures come from its
 * reports, which it sends with each batch of ended tasks; a replaced
 * process's figures add to those of the one before it. */
int luapool_get_worker_stats(luapool *lp, luapool_worker_stats *out, int n);

/* The message of the last error on this handle ("" if none). */
const char *luapool_errmsg(luapool *lp);

/* Cancels what still runs, joins every worker and frees everything: the
 * handle is gone afterwards. Live futures are detached, not freed. Accepts
 * NULL (returns 0). A pointer that is not an open engine, such as one
 * already closed, is left alone: LUAPOOL_EINVAL. */
int luapool_close(luapool *lp);

#ifdef __cplusplus
}
#endif
#endif

/*
 * proc.h - worker processes: the engine's side (proc.c) and the side of the
 * process itself (procworker.c).
 */
#ifndef LP_PROC_H
#define LP_PROC_H

#include <stdint.h>

struct luapool;
struct lp_task;

/* Engine side. Starts cfg.processes worker processes and waits until each
 * has loaded the script. 0 or an LUAPOOL_E* code with the message set. */
int lp_procs_start(struct luapool *eng);
/* Ends the processes (they exit when their pipe closes) and reaps them. */
void lp_procs_stop(struct luapool *eng);
/* Queues a new task for the worker processes. 0, or -1 if out of memory. */
int lp_procs_push(struct luapool *eng, struct lp_task *t);
/* Asks the process running t to cancel it. */
void lp_procs_cancel(struct luapool *eng, struct lp_task *t);
/* The run is being cancelled: tasks not sent are cancelled, processes stop. */
void lp_procs_cancel_all(struct luapool *eng);
/* 1 when no process pool holds a task (queued, in a process, or waiting to
 * go again) whose ending could still wake a task of the engine's. */
int lp_procs_idle(struct luapool *eng);

/* What the worker processes have counted of themselves (their STATS
 * frames) and what the engine decided about their tasks, summed over every
 * process pool: subtasks made and finished inside processes (the tasks sent
 * to them are the engine's own), tasks queued (unsent or waiting inside a
 * process), running, bodies run, failed and retried, the deepest level and
 * their CPU seconds. */
typedef struct lp_remote_totals {
  uint64_t made, fin, run, failed, retried;
  long queued, running;
  int depth;
  double cpu;
} lp_remote_totals;
void lp_procs_totals(struct luapool *eng, lp_remote_totals *out);
/* Fills out[0 .. n-1] with the worker threads of the processes, pool by
 * pool, slot by slot; returns how many there are. */
struct luapool_worker_stats;
int lp_procs_worker_stats(struct luapool *eng, struct luapool_worker_stats *out, int n);

/* Process side: the main of `luapool __worker`, reading frames on in_fd and
 * writing frames on out_fd. Returns the process's exit status. */
int lp_procworker_main(int in_fd, int out_fd);
/* Hooks called by the engine inside a worker process. */
void lp_procworker_started(struct luapool *eng, struct lp_task *t);
void lp_procworker_root_done(struct luapool *eng, struct lp_task *t);
void lp_procworker_idle(struct luapool *eng);
/* A task this process handed over to another is cancelled: any thread. */
void lp_procworker_cancel(struct luapool *eng, struct lp_task *t);
/* At close, with --trace: one event of worker thread `thread` (from 1) for
 * the engine, its times in lp_stats_ns() terms. */
struct lp_trace_ev;
void lp_procworker_trace(struct luapool *eng, int thread, const struct lp_trace_ev *e,
                         const char *fn);
/* counter:add(delta) (add = 1) or counter:get() inside a worker process:
 * asks the engine and suspends the task until it answers. */
struct lua_State;
int lp_procworker_counter(struct lua_State *L, int name, int64_t delta, int add);

#endif

/*
 * stats.h - what a run counts about itself as it goes: tasks made, run,
 * failed and finished, each worker's idle time, and (with --trace) each
 * worker's events. The recording side: the core calls these on its own
 * paths. Reading them (summing, sampling peaks, progress, the trace file)
 * is observe/'s: figures.c and trace.c.
 *
 * Every figure is either owned by one thread (a worker's own counters,
 * written with plain relaxed stores, no read-modify-write) or sampled by the
 * host thread while it waits. Nothing here takes a lock or makes a system
 * call per task; the clock is read only when a worker goes idle or wakes.
 */
#ifndef LP_STATS_H
#define LP_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "tracebuf.h"

struct luapool;
struct lp_worker;
struct lp_task;

/* One worker's counters: written by that worker only, read by the host at
 * any time (a live progress bar), so each is an atomic stored relaxed. */
typedef struct lp_wstats {
  _Atomic uint64_t run;       /* task bodies started (a retry starts again) */
  _Atomic uint64_t failed;    /* tasks that failed for good */
  _Atomic uint64_t retried;   /* failed runs given another go */
  _Atomic uint64_t idle_ns;   /* time spent idle since the first submit */
  _Atomic uint64_t idle_from; /* when the current idle spell began; 0 while busy */
  _Atomic int executing;      /* 1 while a task's code runs on this worker */
  lp_tracebuf *trace;         /* this worker's trace events; NULL without a trace */
} lp_wstats;

/* The engine's part. */
typedef struct lp_stats {
  _Atomic uint64_t host_created;  /* tasks made outside the workers (roots) */
  _Atomic uint64_t host_finished; /* tasks finished outside the workers */
  _Atomic uint64_t t0_ns;         /* lp_stats_ns() of the first submit; 0 before */
  _Atomic double cpu0;            /* process CPU seconds at the first submit */
  /* Host-only, kept here for observe/figures.c, which alone uses them. */
  long peak_queued;    /* highest sample of tasks waiting for a worker */
  long peak_suspended; /* highest sample of started tasks that wait */
  double next_progress;
  double next_counter; /* next queue-depth sample for the trace */
} lp_stats;

/* Monotonic nanoseconds (never 0). */
uint64_t lp_stats_ns(void);
/* The process's CPU seconds so far. */
double lp_stats_cpu(void);

/* An owner's increment: a relaxed load and store, no locked instruction. */
static inline void lp_stats_inc(_Atomic uint64_t *c) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

/* Starts the run's clocks, once: the first submit does it. */
void lp_stats_start(struct luapool *eng);

/* A task was made or finished on a thread that is not a worker. */
void lp_stats_host_created(struct luapool *eng);
void lp_stats_host_finished(struct luapool *eng);

/* The worker found nothing to do (idle = 1) or has work again (idle = 0). */
void lp_stats_idle(struct lp_worker *w, int idle);

/* The worker's running task has just become `to` (NULL: between tasks).
 * Called at every change of lp_worker.current, so a trace sees each slice
 * of a task's execution. */
static inline void lp_stats_switch(lp_wstats *st, struct lp_task *to) {
  atomic_store_explicit(&st->executing, to != 0, memory_order_relaxed);
  if (st->trace) lp_tracebuf_switch(st->trace, to);
}

/* A running task has spawned `child`. */
static inline void lp_stats_spawn(lp_wstats *st, struct lp_task *self, struct lp_task *child) {
  if (st->trace) lp_tracebuf_spawn(st->trace, self, child);
}

#endif

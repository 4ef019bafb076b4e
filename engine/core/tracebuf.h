/*
 * tracebuf.h - a worker's trace events as the core records them (--trace).
 *
 * Each worker that traces has one buffer, which only that worker appends
 * to: a list of fixed-size chunks, never moved once written, with no lock
 * and no system call (the clock is the vDSO's CLOCK_MONOTONIC). Times are
 * lp_stats_ns() values. Nothing reads a buffer while its worker runs: the
 * trace file is written from them after the workers have been joined
 * (observe/trace.c), and lp_pool_free frees them.
 */
#ifndef LP_TRACEBUF_H
#define LP_TRACEBUF_H

#include <stddef.h>
#include <stdint.h>

struct lp_task;

/* One event as a trace keeps it. */
enum { LP_TRACE_SLICE = 0, LP_TRACE_SPAWN = 1 };
typedef struct lp_trace_ev {
  uint64_t ts;    /* when it happened (a slice: began), in lp_stats_ns() terms */
  uint64_t end;   /* a slice: when it ended */
  uint64_t task;  /* a slice: its task; a spawn: the child */
  uint64_t other; /* a slice: the parent's id (0 for a root); a spawn: the spawner */
  int32_t fn;     /* the task function's name id */
  int16_t depth;
  int16_t kind; /* LP_TRACE_SLICE or LP_TRACE_SPAWN */
} lp_trace_ev;

#define LP_TRACEBUF_CHUNK 4096

typedef struct lp_tracebuf {
  lp_trace_ev **chunks;
  size_t nchunks;
  size_t n; /* events written */
  uint64_t dropped;
  /* The open slice. */
  int open;
  int fn;
  int depth;
  uint64_t start;
  uint64_t task;
  uint64_t parent;
} lp_tracebuf;

/* An empty buffer, or NULL when out of memory. */
lp_tracebuf *lp_tracebuf_new(void);
/* Frees b and its events (b may be NULL). */
void lp_tracebuf_free(lp_tracebuf *b);
/* A slot for one more event, or NULL (counted as dropped). */
lp_trace_ev *lp_tracebuf_push(lp_tracebuf *b);
/* Event i (i < b->n). */
static inline lp_trace_ev *lp_tracebuf_at(const lp_tracebuf *b, size_t i) {
  return &b->chunks[i / LP_TRACEBUF_CHUNK][i % LP_TRACEBUF_CHUNK];
}

/* The worker's running task has become `to` (NULL: none): ends the open
 * slice, opens the next. A slice is the time one task's code runs on a
 * worker without interruption. */
void lp_tracebuf_switch(lp_tracebuf *b, struct lp_task *to);
/* The running task `parent` has spawned `child`. */
void lp_tracebuf_spawn(lp_tracebuf *b, struct lp_task *parent, struct lp_task *child);

#endif

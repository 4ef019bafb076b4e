/*
 * trace.h - --trace: a run's execution as Chrome trace-event JSON.
 */
#ifndef LP_TRACE_H
#define LP_TRACE_H

#include <stdint.h>

#include <stddef.h>

struct luapool;
struct lp_tbuf;

/* One event as a trace keeps it. */
enum { LP_TRACE_SLICE = 0, LP_TRACE_SPAWN = 1 };
typedef struct lp_trace_ev {
  uint64_t ts;    /* ns since the trace's origin */
  uint64_t end;   /* a slice: when it ended */
  uint64_t task;  /* a slice: its task; a spawn: the child */
  uint64_t other; /* a slice: the parent's id (0 for a root); a spawn: the spawner */
  int32_t fn;     /* the task function's name id */
  int16_t depth;
  int16_t kind; /* LP_TRACE_SLICE or LP_TRACE_SPAWN */
} lp_trace_ev;

/* Makes the engine's trace (cfg.trace_path set): one event buffer per
 * worker. Returns 0, or -1 when out of memory. */
int lp_trace_open(struct luapool *eng);
/* Worker i's buffer, or NULL without a trace; called as the workers are
 * set up (the first call makes the trace). */
struct lp_tbuf *lp_trace_buf(struct luapool *eng, int i);
/* Host thread: a sample of the queue depths. */
void lp_trace_counter(struct luapool *eng, long queued, long suspended);
/* Engine side, any thread: an event of thread `thread` of worker process
 * `process` (both from 1), its times in lp_stats_ns() terms, its function
 * by name. Kept on that thread's track. */
void lp_trace_remote(struct luapool *eng, int process, int thread, const lp_trace_ev *ev,
                     const char *fn, size_t fnlen);
/* After the workers are joined: writes the file and frees the trace.
 * Inside a worker process the events go to the engine instead
 * (its uplink's trace), in lp_stats_ns() terms. */
void lp_trace_close(struct luapool *eng);
/* Events the buffers had no room for. */
uint64_t lp_trace_dropped(struct luapool *eng);

#endif

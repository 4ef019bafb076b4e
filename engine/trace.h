/*
 * trace.h - --trace: a run's execution as Chrome trace-event JSON.
 */
#ifndef LP_TRACE_H
#define LP_TRACE_H

#include <stdint.h>

struct luapool;
struct lp_tbuf;

/* Makes the engine's trace (cfg.trace_path set): one event buffer per
 * worker. Returns 0, or -1 when out of memory. */
int lp_trace_open(struct luapool *eng);
/* Worker i's buffer, or NULL without a trace; called as the workers are
 * set up (the first call makes the trace). */
struct lp_tbuf *lp_trace_buf(struct luapool *eng, int i);
/* Host thread: a sample of the queue depths. */
void lp_trace_counter(struct luapool *eng, long queued, long suspended);
/* After the workers are joined: writes the file and frees the trace. */
void lp_trace_close(struct luapool *eng);
/* Events the buffers had no room for. */
uint64_t lp_trace_dropped(struct luapool *eng);

#endif

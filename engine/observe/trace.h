/*
 * trace.h - --trace: a run's execution as Chrome trace-event JSON, written
 * at close from the workers' event buffers (core/tracebuf.h), the events of
 * worker processes, and the host's samples of the queue depths.
 */
#ifndef LP_TRACE_H
#define LP_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "tracebuf.h"

struct luapool;

/* Makes the engine's trace (cfg.trace_path set), before the workers and
 * worker processes start: its origin (time 0 in the file), the buffers of
 * worker processes' threads, the samples. Returns 0, or -1 when out of
 * memory (lp_trace_close tries again). */
int lp_trace_open(struct luapool *eng);
/* Host thread: a sample of the queue depths. */
void lp_trace_counter(struct luapool *eng, long queued, long suspended);
/* Engine side, any thread: an event of thread `thread` of worker process
 * `process` (both from 1), its times in lp_stats_ns() terms, its function
 * by name. Kept on that thread's track. */
void lp_trace_remote(struct luapool *eng, int process, int thread, const lp_trace_ev *ev,
                     const char *fn, size_t fnlen);
/* After the workers are joined: writes the file from their buffers
 * (lp_worker.stats.trace, freed later by lp_pool_free) and frees the
 * trace. Inside a worker process the events go to the engine instead
 * (its uplink's trace), in lp_stats_ns() terms. */
void lp_trace_close(struct luapool *eng);
/* Events the buffers had no room for. */
uint64_t lp_trace_dropped(struct luapool *eng);

#endif

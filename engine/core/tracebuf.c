/*
 * tracebuf.c - recording a worker's trace events (--trace).
 *
 * DESIGN. Each worker appends fixed-size events to its own buffer, with no
 * lock and no system call. A slice is the time one task's code runs on a
 * worker without interruption; it ends when the worker's running task
 * changes (the task yields, ends, or runs a child inline), so a task that
 * waits shows as several slices. Spawns are events of the spawning worker.
 * Each buffer keeps at most LP_TRACE_MAX events; the rest are counted as
 * dropped. The buffers are read, and the file written, by observe/trace.c
 * once the workers are joined.
 */
#include "tracebuf.h"

#include <stdlib.h>

#include "stats.h"
#include "task.h"

#define LP_TRACE_MAX (1u << 21) /* events per worker (80 MB) */

lp_tracebuf *lp_tracebuf_new(void) { return calloc(1, sizeof(lp_tracebuf)); }

void lp_tracebuf_free(lp_tracebuf *b) {
  if (!b) return;
  for (size_t c = 0; c < b->nchunks; c++) free(b->chunks[c]);
  free(b->chunks);
  free(b);
}

lp_trace_ev *lp_tracebuf_push(lp_tracebuf *b) {
  size_t c = b->n / LP_TRACEBUF_CHUNK;
  if (b->n >= LP_TRACE_MAX) goto drop;
  if (c == b->nchunks) {
    lp_trace_ev **nc = realloc(b->chunks, sizeof *nc * (c + 1));
    if (!nc) goto drop;
    b->chunks = nc;
    if (!(nc[c] = malloc(sizeof(lp_trace_ev) * LP_TRACEBUF_CHUNK))) goto drop;
    b->nchunks++;
  }
  return &b->chunks[c][b->n++ % LP_TRACEBUF_CHUNK];
drop:
  b->dropped++;
  return NULL;
}

void lp_tracebuf_switch(lp_tracebuf *b, lp_task *to) {
  uint64_t t = lp_stats_ns();
  if (b->open) {
    lp_trace_ev *e = lp_tracebuf_push(b);
    if (e)
      *e = (lp_trace_ev){b->start, t, b->task, b->parent, b->fn, (int16_t)b->depth, LP_TRACE_SLICE};
  }
  b->open = to != NULL;
  if (!to) return;
  b->start = t;
  b->task = to->id;
  b->parent = to->parent ? to->parent->id : 0;
  b->fn = to->fn;
  b->depth = to->depth > INT16_MAX ? INT16_MAX : to->depth;
}

void lp_tracebuf_spawn(lp_tracebuf *b, lp_task *parent, lp_task *child) {
  lp_trace_ev *e = lp_tracebuf_push(b);
  if (e) *e = (lp_trace_ev){lp_stats_ns(), 0, child->id, parent->id, child->fn, 0, LP_TRACE_SPAWN};
}

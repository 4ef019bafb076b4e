/*
 * sendq.c - tasks waiting to be sent to a worker process.
 *
 * One FIFO ring of task pointers per priority value, the rings in
 * ascending priority. Tasks of a run mostly share a few priorities. A
 * feeder takes a batch as a copy of pointers, without touching the records
 * (each one a cache miss on the spawner's core): the lock around the queue
 * (the caller's) is held briefly, and a spawning task rarely finds it taken.
 */

#include "sendq.h"
#include "levels.h"

#include <stdlib.h>
#include <string.h>

#define MAXLEVELS 64

int lp_sendq_init(lp_sendq *q) {
  memset(q, 0, sizeof *q);
  q->levels = calloc(MAXLEVELS, sizeof *q->levels);
  return q->levels ? 0 : -1;
}

void lp_sendq_free(lp_sendq *q) {
  for (int i = 0; i < q->nlevels; i++) free(q->levels[i].buf);
  free(q->levels);
  memset(q, 0, sizeof *q);
}

static lp_plevel *level_for(lp_sendq *q, double prio) {
  return lp_level_for(q->levels, &q->nlevels, sizeof(lp_plevel), MAXLEVELS, prio);
}

static int level_grow(lp_plevel *lv) {
  size_t n = lv->tail - lv->head;
  if (lv->buf && n <= lv->mask) return 0;
  size_t cap = lv->buf ? (lv->mask + 1) * 2 : 1024;
  lp_task **nb = malloc(cap * sizeof *nb);
  if (!nb) return -1;
  for (size_t i = 0; lv->buf && i < n; i++) nb[i] = lv->buf[(lv->head + i) & lv->mask];
  free(lv->buf);
  lv->buf = nb;
  lv->mask = cap - 1;
  lv->head = 0;
  lv->tail = n;
  return 0;
}

/* A task sent back (its process died before it began) goes first. */
int lp_sendq_push(lp_sendq *q, lp_task *t, int front) {
  lp_plevel *lv = level_for(q, t->priority);
  if (level_grow(lv) != 0) return -1;
  if (front)
    lv->buf[--lv->head & lv->mask] = t;
  else
    lv->buf[lv->tail++ & lv->mask] = t;
  q->n++;
  return 0;
}

/* Up to n tasks, lowest priority value first, oldest first. */
int lp_sendq_take(lp_sendq *q, lp_task **out, int n) {
  int got = 0;
  for (int i = 0; i < q->nlevels && got < n; i++) {
    lp_plevel *lv = &q->levels[i];
    while (got < n && lv->head != lv->tail) out[got++] = lv->buf[lv->head++ & lv->mask];
  }
  q->n -= got;
  return got;
}

lp_task *lp_sendq_pop(lp_sendq *q) {
  lp_task *t;
  return lp_sendq_take(q, &t, 1) ? t : NULL;
}

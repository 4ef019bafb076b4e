/*
 * sendq.h - tasks waiting to be sent to a worker process: lowest priority
 * value first, oldest first, a task sent back ahead of the rest.
 */
#ifndef LP_SENDQ_H
#define LP_SENDQ_H

#include <stddef.h>

#include "task.h"

typedef struct lp_plevel {
  double prio; /* first: lp_level_for (levels.h) reads it there */
  lp_task **buf;
  size_t mask; /* capacity - 1, a power of two; 0 before the first push */
  size_t head; /* next to pop */
  size_t tail; /* next free */
} lp_plevel;

typedef struct lp_sendq {
  lp_plevel *levels; /* ascending priority */
  int nlevels;
  long n; /* tasks queued */
} lp_sendq;

int lp_sendq_init(lp_sendq *q);
void lp_sendq_free(lp_sendq *q);
/* Queues t at the back of its priority, or with `front` ahead of it. 0, or
 * -1 when out of memory. */
int lp_sendq_push(lp_sendq *q, lp_task *t, int front);
/* Takes up to n tasks into out; returns how many. */
int lp_sendq_take(lp_sendq *q, lp_task **out, int n);
lp_task *lp_sendq_pop(lp_sendq *q);

#endif

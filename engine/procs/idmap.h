/*
 * idmap.h - tasks by id: the tasks a worker process has, on the engine's side.
 */
#ifndef LP_IDMAP_H
#define LP_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "task.h"

/* Open addressing on the task's own id; zero-initialised is empty. */
typedef struct lp_idmap {
  lp_task **slot;
  size_t cap, n;
} lp_idmap;

/* 0, or -1 when out of memory. */
int lp_idmap_put(lp_idmap *m, lp_task *t);
lp_task *lp_idmap_get(lp_idmap *m, uint64_t id);
/* Removes and returns the task with that id, or NULL. */
lp_task *lp_idmap_take(lp_idmap *m, uint64_t id);

#endif

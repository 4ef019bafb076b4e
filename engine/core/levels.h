/*
 * levels.h - a short array of queues kept in ascending priority, one per
 * distinct priority value (the scheduler's deques, the send queue's rings).
 */
#ifndef LP_LEVELS_H
#define LP_LEVELS_H

#include <string.h>

/* The level for prio among *n levels of `size` bytes each, whose first
 * member is their double priority; a zeroed level with that priority is
 * inserted in order if there is none. When `max` levels exist already the
 * nearest one is used: scheduling priority is a hint, the strict order of
 * output is the reporter's business. Inline: size and max are constants
 * at each use, and the scheduler calls this on every push. */
static inline void *lp_level_for(void *levels, int *n, size_t size, int max, double prio) {
  char *base = levels;
  int lo = 0, hi = *n;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    double p;
    memcpy(&p, base + (size_t)mid * size, sizeof p);
    if (p < prio)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < *n) {
    double p;
    memcpy(&p, base + (size_t)lo * size, sizeof p);
    if (p == prio) return base + (size_t)lo * size;
  }
  if (*n == max) return base + (size_t)(lo < *n ? lo : lo - 1) * size;
  memmove(base + (size_t)(lo + 1) * size, base + (size_t)lo * size, (size_t)(*n - lo) * size);
  (*n)++;
  memset(base + (size_t)lo * size, 0, size);
  memcpy(base + (size_t)lo * size, &prio, sizeof prio);
  return base + (size_t)lo * size;
}

#endif

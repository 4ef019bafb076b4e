/*
 * timer.h - each worker's sleeping tasks, ordered by wake-up time.
 */
#ifndef LP_TIMER_H
#define LP_TIMER_H

/* Seconds: the timer of a wait without a timeout (sync.c), there only so
 * that a cancel of the run finds the waiter. A worker whose next timer is
 * this far away waits for a wake and nothing else. */
#define LP_TIMER_FOREVER 1e9

#include <stddef.h>

struct lp_task;

typedef struct lp_timer_entry {
  double when; /* lp_now() seconds */
  struct lp_task *task;
} lp_timer_entry;

/* A binary min-heap owned by one worker; no locking. Each task has at most
 * one entry, whose index it keeps in task->timer_slot. */
typedef struct lp_timers {
  lp_timer_entry *heap;
  size_t n;
  size_t cap;
} lp_timers;

/* Monotonic clock, seconds. */
double lp_now(void);

/* Blocks the calling thread for `seconds` (nothing if <= 0), through
 * signals. Only for runs where nothing else could use the thread. */
void lp_sleep(double seconds);

void lp_timers_free(lp_timers *tm);
/* Adds (or moves) t's entry. Returns 0, or -1 when out of memory. */
int lp_timers_add(lp_timers *tm, struct lp_task *t, double when);
/* Removes t's entry if it has one. */
void lp_timers_remove(lp_timers *tm, struct lp_task *t);
/* Seconds until the earliest entry (0 if due), or -1 if there is none. */
double lp_timers_next(const lp_timers *tm, double now);
/* Removes and returns a task whose time has come, or NULL. */
struct lp_task *lp_timers_pop_due(lp_timers *tm, double now);

#endif

/*
 * timer.c - sleeping without a thread per sleeper.
 *
 * luapool.sleep() and waits with a timeout put the task into its owner's
 * heap and yield. The owner looks at the heap between tasks and parks no
 * longer than until the earliest entry. Only the owning worker touches its
 * heap, so there is no lock.
 */
#include "timer.h"

#include <stdlib.h>
#include <time.h>

#include "task.h"

double lp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void lp_sleep(double seconds) {
  if (!(seconds > 0)) return;
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

void lp_timers_free(lp_timers *tm) {
  free(tm->heap);
  tm->heap = NULL;
  tm->n = tm->cap = 0;
}

static void place(lp_timers *tm, size_t i, lp_timer_entry e) {
  tm->heap[i] = e;
  e.task->timer_slot = (int)i;
}

static void sift_up(lp_timers *tm, size_t i) {
  lp_timer_entry e = tm->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (tm->heap[p].when <= e.when) break;
    place(tm, i, tm->heap[p]);
    i = p;
  }
  place(tm, i, e);
}

static void sift_down(lp_timers *tm, size_t i) {
  lp_timer_entry e = tm->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= tm->n) break;
    if (c + 1 < tm->n && tm->heap[c + 1].when < tm->heap[c].when) c++;
    if (e.when <= tm->heap[c].when) break;
    place(tm, i, tm->heap[c]);
    i = c;
  }
  place(tm, i, e);
}

int lp_timers_add(lp_timers *tm, struct lp_task *t, double when) {
  lp_timers_remove(tm, t);
  if (tm->n == tm->cap) {
    size_t cap = tm->cap ? tm->cap * 2 : 64;
    lp_timer_entry *h = realloc(tm->heap, cap * sizeof *h);
    if (!h) return -1;
    tm->heap = h;
    tm->cap = cap;
  }
  tm->heap[tm->n] = (lp_timer_entry){when, t};
  sift_up(tm, tm->n++);
  return 0;
}

void lp_timers_remove(lp_timers *tm, struct lp_task *t) {
  if (t->timer_slot < 0) return;
  size_t i = (size_t)t->timer_slot;
  t->timer_slot = -1;
  if (i == --tm->n) return;
  double old = tm->heap[i].when;
  place(tm, i, tm->heap[tm->n]);
  if (tm->heap[i].when < old)
    sift_up(tm, i);
  else
    sift_down(tm, i);
}

double lp_timers_next(const lp_timers *tm, double now) {
  if (tm->n == 0) return -1;
  double d = tm->heap[0].when - now;
  return d > 0 ? d : 0;
}

struct lp_task *lp_timers_pop_due(lp_timers *tm, double now) {
  if (tm->n == 0 || tm->heap[0].when > now) return NULL;
  struct lp_task *t = tm->heap[0].task;
  lp_timers_remove(tm, t);
  return t;
}

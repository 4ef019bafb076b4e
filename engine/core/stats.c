/*
 * stats.c - a run's counts, as the threads that make them record them.
 *
 * DESIGN. Counts that change per task (created, finished, started, failed)
 * live with the thread that makes them: each worker writes its own with a
 * relaxed load and store (lp_stats_inc), and the host sums them when asked
 * (observe/figures.c). Nothing per task takes a lock, makes a system call
 * or reads the clock. A worker reads the clock only when it runs out of
 * work and when it finds work again, to count its idle time; its busy time
 * is the rest. Tasks made and finished outside the workers (the host's
 * roots) are counted here with an atomic add; the first of them starts the
 * run's clocks.
 */
#include "stats.h"

#include <time.h>

#include "engine.h"
#include "pool.h"

uint64_t lp_stats_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1;
}

double lp_stats_cpu(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void lp_stats_start(luapool *eng) {
  lp_stats *s = &eng->stats;
  uint64_t zero = 0;
  if (atomic_load(&s->t0_ns) == 0 &&
      atomic_compare_exchange_strong(&s->t0_ns, &zero, lp_stats_ns()))
    atomic_store(&s->cpu0, lp_stats_cpu());
}

void lp_stats_host_created(luapool *eng) {
  atomic_fetch_add(&eng->stats.host_created, 1);
  /* The first submit starts the run's clocks (whoever makes the first
   * task outside the workers, once). */
  lp_stats_start(eng);
}

void lp_stats_host_finished(luapool *eng) { atomic_fetch_add(&eng->stats.host_finished, 1); }

void lp_stats_idle(lp_worker *w, int idle) {
  lp_wstats *st = &w->stats;
  uint64_t t0 = atomic_load_explicit(&w->eng->stats.t0_ns, memory_order_relaxed);
  if (t0 == 0) return; /* before the first submit nothing counts */
  uint64_t now = lp_stats_ns();
  if (idle) {
    atomic_store_explicit(&st->idle_from, now, memory_order_relaxed);
    return;
  }
  uint64_t from = atomic_load_explicit(&st->idle_from, memory_order_relaxed);
  if (from == 0) return;
  if (from < t0) from = t0;
  uint64_t idle_ns = atomic_load_explicit(&st->idle_ns, memory_order_relaxed);
  atomic_store_explicit(&st->idle_ns, idle_ns + (now > from ? now - from : 0),
                        memory_order_relaxed);
  atomic_store_explicit(&st->idle_from, 0, memory_order_relaxed);
}

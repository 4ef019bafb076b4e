/*
 * figures.c - a run's figures as the host reads them: luapool_get_stats,
 * luapool_get_worker_stats, and the host's tick while it waits (peaks, the
 * trace's queue counters, the progress callback).
 *
 * DESIGN. The counts are recorded by the threads that make them
 * (core/stats.c: each worker its own, the host's roots with an atomic);
 * this file only reads and sums them. Levels (queued, suspended) are not
 * tracked per task at all: the host thread samples them each time it wakes
 * while waiting (about every millisecond, see luapool_wait, or after every
 * task in inline mode), and keeps the peaks (lp_stats' host-only fields). A
 * sample reads counters one after another while workers run, so it is a
 * close estimate; once the run is over every count is exact.
 */
#include "figures.h"

#include <string.h>

#include "engine.h"
#include "pool.h"
#include "stats.h"
#include "trace.h"

/* The levels: tasks waiting for a worker, running, and started but
 * waiting for something (what is left of the tasks created and not
 * finished). */
static void levels(luapool *eng, const lp_place_totals *rt, uint64_t *known, uint64_t *done,
                   long *queued, long *running, long *suspended) {
  uint64_t made = atomic_load(&eng->stats.host_created);
  uint64_t fin = atomic_load(&eng->stats.host_finished);
  long run = 0;
  for (int i = 0; i < eng->nworkers; i++) {
    lp_worker *w = &eng->workers[i];
    /* Finished first: a task counted finished is counted created too. */
    fin += atomic_load_explicit(&w->cache.finished, memory_order_relaxed);
    run += atomic_load_explicit(&w->stats.executing, memory_order_relaxed);
  }
  for (int i = 0; i < eng->nworkers; i++)
    made += atomic_load_explicit(&eng->workers[i].cache.created, memory_order_relaxed);
  /* Subtasks inside worker processes; the tasks sent there are counted
   * above, as open until their process says they ended. */
  made += rt->made;
  fin += rt->fin;
  run += rt->running;
  long q = lp_sched_queued(&eng->sched) + rt->queued;
  long open = made > fin ? (long)(made - fin) : 0;
  long s = open - q - run;
  *known = made;
  *done = fin < made ? fin : made;
  *queued = q < open ? q : open;
  *running = run;
  *suspended = s > 0 ? s : 0;
}

static void sample(luapool *eng, const lp_place_totals *rt, luapool_stats *out) {
  uint64_t known, done;
  long queued, running, suspended;
  levels(eng, rt, &known, &done, &queued, &running, &suspended);
  lp_stats *s = &eng->stats;
  if (queued > s->peak_queued) s->peak_queued = queued;
  if (suspended > s->peak_suspended) s->peak_suspended = suspended;
  if (!out) return;
  out->tasks_known = known;
  out->tasks_done = done;
  out->queued = queued;
  out->running = running;
  out->suspended = suspended;
}

void lp_figures_tick(luapool *eng) {
  if (!eng->workers) return;
  lp_stats *s = &eng->stats;
  lp_place_totals rt;
  lp_places_totals(eng, &rt);
  if (!eng->trace && !eng->cfg.on_progress) {
    sample(eng, &rt, NULL);
    return;
  }
  double now = lp_now();
  if (eng->trace && now >= s->next_counter) {
    s->next_counter = now + 0.001;
    luapool_stats st;
    memset(&st, 0, sizeof st);
    sample(eng, &rt, &st);
    lp_trace_counter(eng, st.queued, st.suspended);
  } else {
    sample(eng, &rt, NULL);
  }
  double iv = eng->cfg.progress_interval > 0 ? eng->cfg.progress_interval : 0.1;
  if (s->next_progress == 0) s->next_progress = now + iv; /* a short run shows nothing */
  if (eng->cfg.on_progress && now >= s->next_progress) {
    s->next_progress = now + iv;
    luapool_stats st;
    luapool_get_stats(eng, &st);
    eng->cfg.on_progress(eng->cfg.ud, &st);
  }
}

void luapool_get_stats(luapool *lp, luapool_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!lp_engine_is_open(lp) || !lp->workers) return;
  lp_place_totals rt;
  lp_places_totals(lp, &rt);
  sample(lp, &rt, out);
  out->tasks_run = rt.run;
  out->tasks_failed = rt.failed;
  out->tasks_retried = rt.retried;
  for (int i = 0; i < lp->nworkers; i++) {
    lp_wstats *st = &lp->workers[i].stats;
    out->tasks_run += atomic_load_explicit(&st->run, memory_order_relaxed);
    out->tasks_failed += atomic_load_explicit(&st->failed, memory_order_relaxed);
    out->tasks_retried += atomic_load_explicit(&st->retried, memory_order_relaxed);
  }
  out->records = lp->report.delivered;
  out->records_spilled = atomic_load_explicit(&lp->report.spilled, memory_order_relaxed);
  long long peak = atomic_load_explicit(&lp->report.peak, memory_order_relaxed);
  out->held_peak = peak > 0 ? (uint64_t)peak : 0;
  out->max_depth = atomic_load(&lp->max_depth);
  if (rt.depth > out->max_depth) out->max_depth = rt.depth;
  out->workers = lp->nworkers;
  out->peak_queued = lp->stats.peak_queued;
  out->peak_suspended = lp->stats.peak_suspended;
  uint64_t t0 = atomic_load(&lp->stats.t0_ns);
  if (t0) {
    out->wall = (double)(lp_stats_ns() - t0) * 1e-9;
    out->cpu = lp_stats_cpu() - atomic_load(&lp->stats.cpu0) + rt.cpu;
  }
}

int luapool_get_worker_stats(luapool *lp, luapool_worker_stats *out, int n) {
  if (!lp_engine_is_open(lp) || (n > 0 && !out)) return LUAPOOL_EINVAL;
  if (!lp->workers) return 0;
  uint64_t t0 = atomic_load(&lp->stats.t0_ns);
  uint64_t now = lp_stats_ns();
  double wall = t0 ? (double)(now - t0) * 1e-9 : 0;
  for (int i = 0; i < n && i < lp->nworkers; i++) {
    lp_wstats *st = &lp->workers[i].stats;
    out[i].tasks_run = atomic_load_explicit(&st->run, memory_order_relaxed);
    /* Idle so far, the current spell included; inline mode has no idle. */
    uint64_t idle = atomic_load_explicit(&st->idle_ns, memory_order_relaxed);
    uint64_t from = atomic_load_explicit(&st->idle_from, memory_order_relaxed);
    if (from && t0) idle += now - (from > t0 ? from : t0);
    double busy = wall - (double)idle * 1e-9;
    out[i].busy = busy < 0 ? 0 : busy > wall ? wall : busy;
    out[i].process = 0;
    out[i].thread = i + 1;
  }
  int k = n > lp->nworkers ? lp->nworkers : n < 0 ? 0 : n;
  return lp->nworkers + lp_places_worker_stats(lp, out + k, n - k);
}

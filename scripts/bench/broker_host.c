/*
 * broker_host.c - a host of the C API that submits root tasks through a
 * broker, for scripts/bench.lua's broker figures: the roots of a run are
 * the tasks a client enqueues, as a job queue's client does.
 *
 *   broker_host URL SCRIPT latency SAMPLES PAUSE_MS
 *     enqueue-to-start of one task on an idle worker: SAMPLES times, a
 *     pause, the clock (CLOCK_MONOTONIC), submit started() and wait for
 *     it; the task returns the clock when its body began (stamp.lua)
 *   broker_host URL SCRIPT roots N
 *     N trivial roots (noop) submitted at once, every one awaited: each
 *     crosses Redis both ways
 *
 * The host runs no task itself (workers = 0): `luapool worker` processes
 * on the broker run them. One untimed task first, so that the run's
 * processes on the workers are up. Prints one JSON line.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "luapool.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pause_ms(double ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)((ms - 1000 * (time_t)(ms / 1000)) * 1e6)};
  nanosleep(&ts, NULL);
}

static void die(luapool *lp, const char *what) {
  fprintf(stderr, "broker_host: %s: %s\n", what, lp ? luapool_errmsg(lp) : "");
  exit(1);
}

/* Runs fn and returns its first value, a number (the task's clock). */
static double run_one(luapool *lp, const char *fn) {
  luapool_future *f;
  if (luapool_submit_values(lp, fn, NULL, &f) != 0) die(lp, "submit");
  if (luapool_future_wait(f, 60) != 0) die(lp, "the task");
  const char *packed;
  size_t len;
  double value = 0;
  luapool_cursor c;
  luapool_value v;
  if (luapool_future_result(f, &packed, &len) > 0 && luapool_cursor_init(&c, packed, len) > 0 &&
      luapool_cursor_next(&c, &v) == 0)
    value = v.type == LUAPOOL_TNUMBER ? v.number : (double)v.integer;
  luapool_future_free(f);
  return value;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void latency(luapool *lp, int samples, double pause) {
  double *ms = calloc((size_t)samples, sizeof *ms);
  if (!ms) die(NULL, "out of memory");
  for (int i = 0; i < samples; i++) {
    pause_ms(pause); /* the workers back to waiting on Redis */
    double enqueued = now();
    ms[i] = (run_one(lp, "started") - enqueued) * 1e3;
  }
  qsort(ms, (size_t)samples, sizeof *ms, by_value);
  double median = samples % 2 ? ms[samples / 2] : (ms[samples / 2 - 1] + ms[samples / 2]) / 2;
  printf(
      "{\"latency_ms\":%.4f,\"latency_min_ms\":%.4f,\"latency_max_ms\":%.4f,"
      "\"latency_samples\":%d,\"latency_pause_ms\":%g}\n",
      median, ms[0], ms[samples - 1], samples, pause);
  free(ms);
}

static void roots(luapool *lp, long n) {
  luapool_future **fs = calloc((size_t)n, sizeof *fs);
  if (!fs) die(NULL, "out of memory");
  double t0 = now();
  for (long i = 0; i < n; i++)
    if (luapool_submit_values(lp, "noop", NULL, &fs[i]) != 0) die(lp, "submit");
  for (long i = 0; i < n; i++) {
    if (luapool_future_wait(fs[i], 600) != 0) die(lp, "a root");
    luapool_future_free(fs[i]);
  }
  double s = now() - t0;
  printf("{\"roots_n\":%ld,\"roots_s\":%.4f,\"roots_per_s\":%.1f}\n", n, s, n / s);
  free(fs);
}

int main(int argc, char **argv) {
  if (argc < 5 || (strcmp(argv[3], "latency") == 0 && argc < 6)) {
    fprintf(stderr, "usage: broker_host URL SCRIPT latency SAMPLES PAUSE_MS | roots N\n");
    return 2;
  }
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 0;
  cfg.broker = argv[1];
  cfg.order = LUAPOOL_ORDER_COMPLETION;
  luapool *lp;
  if (luapool_open(&cfg, &lp) != 0) die(NULL, "open");
  if (luapool_load_file(lp, argv[2]) != 0) die(lp, "load");
  run_one(lp, "started"); /* the run's processes up on the workers */
  if (strcmp(argv[3], "latency") == 0)
    latency(lp, atoi(argv[4]), atof(argv[5]));
  else
    roots(lp, atol(argv[4]));
  if (luapool_wait(lp, 60) != 0) die(lp, "wait");
  luapool_close(lp);
  return 0;
}

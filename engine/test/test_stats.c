/*
 * test_stats.c - the run's figures through the public API: the live
 * progress callback (read while workers run: a thread test under TSan),
 * the final counts, each worker's share, and a trace file written at close.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "luapool.h"

typedef struct seen {
  int calls;
  int monotonic; /* done and known never went down, done <= known */
  uint64_t last_done, last_known;
  long max_suspended;
  int failures;
} seen;

static void on_progress(void *ud, const luapool_stats *st) {
  seen *s = ud;
  s->calls++;
  if (st->tasks_done < s->last_done || st->tasks_known < s->last_known ||
      st->tasks_done > st->tasks_known)
    s->monotonic = 0;
  s->last_done = st->tasks_done;
  s->last_known = st->tasks_known;
  if (st->suspended > s->max_suspended) s->max_suspended = st->suspended;
}

static void on_failure(void *ud, const char *msg) {
  (void)msg;
  ((seen *)ud)->failures++;
}

/* 1 main, 4 branches, 20 leaves that sleep 50 ms twice, 1 leaf that
 * fails and is retried twice. */
static const char script[] =
    "local luapool = require 'luapool'\n"
    "function leaf(i) luapool.sleep(0.05) luapool.sleep(0.05) return i end\n"
    "function branch(b) for i = 1, 5 do luapool.spawn(leaf, i) end end\n"
    "function bad() error('no') end\n"
    "function main()\n"
    "  for b = 1, 4 do luapool.spawn(branch, b) end\n"
    "  local f = luapool.spawn({retries = 2}, bad)\n"
    "  luapool.wait({f})\n"
    "  assert(not f:ok())\n"
    "end\n";

static void run(int workers, const char *trace) {
  seen s = {0, 1, 0, 0, 0, 0};
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = workers;
  cfg.on_progress = on_progress;
  cfg.progress_interval = 0.01;
  cfg.on_failure = on_failure;
  cfg.trace_path = trace;
  cfg.ud = &s;
  luapool *lp;
  CHECK_EQ(luapool_open(&cfg, &lp), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=stats"), 0);
  CHECK_EQ(luapool_submit(lp, "main", 0, NULL), 0);
  CHECK_EQ(luapool_wait(lp, -1), 0);

  /* The run takes 0.1 s at least and the callback is due every 10 ms. */
  CHECK(s.calls >= 1);
  CHECK(s.monotonic);
  luapool_stats st;
  luapool_get_stats(lp, &st);
  CHECK_EQ(st.tasks_run, 1 + 4 + 20 + 3);
  CHECK_EQ(st.tasks_failed, 1);
  CHECK_EQ(st.tasks_retried, 2);
  CHECK_EQ(st.tasks_known, 1 + 4 + 20 + 1);
  CHECK_EQ(st.tasks_done, st.tasks_known);
  CHECK_EQ(st.running, 0);
  CHECK_EQ(st.queued, 0);
  CHECK_EQ(st.suspended, 0);
  CHECK_EQ(st.max_depth, 2);
  CHECK_EQ(st.workers, workers ? workers : 1);
  CHECK(st.wall > 0);
  CHECK(st.cpu >= 0);
  CHECK(st.peak_suspended >= s.max_suspended);

  luapool_worker_stats ws[8];
  int n = luapool_get_worker_stats(lp, ws, 8);
  CHECK_EQ(n, workers ? workers : 1);
  uint64_t sum = 0;
  for (int i = 0; i < n && i < 8; i++) {
    sum += ws[i].tasks_run;
    CHECK(ws[i].busy >= 0);
  }
  CHECK_EQ(sum, st.tasks_run);
  CHECK_EQ(luapool_get_worker_stats(lp, NULL, 0), n);
  luapool_close(lp);
  CHECK_EQ(s.failures, 0);
}

int main(void) {
  run(2, NULL);
  run(0, NULL);
  char path[] = "/tmp/luapool_test_stats_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  run(2, path);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  if (f) {
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    buf[len] = '\0';
    fclose(f);
    CHECK(strncmp(buf, "{\"traceEvents\":[", 16) == 0);
    CHECK(strstr(buf, "\"name\":\"thread_name\"") != NULL);
  }
  remove(path);

  /* A trace that cannot be written is a failure reported at close. */
  seen s = {0};
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 1;
  cfg.trace_path = "/nonexistent/dir/trace.json";
  cfg.on_failure = on_failure;
  cfg.ud = &s;
  luapool *lp;
  CHECK_EQ(luapool_open(&cfg, &lp), 0);
  luapool_close(lp);
  CHECK_EQ(s.failures, 1);

  luapool_stats st;
  luapool_get_stats(NULL, &st);
  CHECK_EQ(st.tasks_run, 0);
  CHECK_EQ(luapool_get_worker_stats(NULL, NULL, 0), LUAPOOL_EINVAL);
  return check_report("test_stats");
}

/*
 * test_hold.c - the memory bound of held records through the public API
 * (luapool_config.hold): with an on_record callback slower than the tasks,
 * every record arrives once, the records held at once stay near the bound
 * (luapool_stats.held_peak), completion order never spills (its records
 * wait for the output: their tasks wait for room) and tree order spills
 * what waits behind a sleeping first task, then delivers it in order.
 *
 * Single-threaded test code: the callback runs on the host thread, inside
 * luapool_wait.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "luapool.h"

#define N 200000
#define TASKS 8

static const char script[] =
    "local luapool = require 'luapool'\n"
    "function producer(first, n) for i = first, first + n - 1 do luapool.emit(i) end end\n"
    "function sleeper(s) luapool.sleep(s) luapool.emit(0) end\n"
    "function main(n, tasks, sleep)\n"
    "  n, tasks, sleep = tonumber(n), tonumber(tasks), tonumber(sleep)\n"
    "  if sleep > 0 then luapool.spawn(sleeper, sleep) end\n"
    "  local per = n // tasks\n"
    "  for t = 0, tasks - 1 do luapool.spawn(producer, t * per + 1, per) end\n"
    "end\n";

typedef struct seen {
  long count;
  long bad;       /* out of range or twice */
  long unordered; /* tree order: not the one after the one before */
  long last;
  int failures;
  unsigned char *got; /* got[v]: v arrived */
} seen;

static void on_record(void *ud, const luapool_record *rec) {
  seen *s = ud;
  long v = strtol(rec->text, NULL, 10);
  if (v < 0 || v > N || s->got[v]) {
    s->bad++;
  } else {
    s->got[v] = 1;
  }
  if (v != s->last + 1 && !(v == 0 && s->count == 0)) s->unordered++;
  s->last = v;
  if (++s->count % 1000 == 0) { /* a slow consumer: 1 ms per 1000 records */
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

static void on_failure(void *ud, const char *msg) {
  (void)msg;
  ((seen *)ud)->failures++;
}

static void run(int order, const char *sleep, size_t hold, luapool_stats *st, seen *s) {
  memset(s, 0, sizeof *s);
  s->got = calloc(N + 1, 1);
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 2;
  cfg.order = order;
  cfg.hold = hold;
  cfg.on_record = on_record;
  cfg.on_failure = on_failure;
  cfg.ud = s;
  luapool *lp;
  CHECK_EQ(luapool_open(&cfg, &lp), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=hold"), 0);
  char n[16], tasks[16];
  snprintf(n, sizeof n, "%d", N);
  snprintf(tasks, sizeof tasks, "%d", TASKS);
  const char *argv[] = {n, tasks, sleep};
  CHECK_EQ(luapool_submit(lp, "main", 3, argv), 0);
  CHECK_EQ(luapool_wait(lp, -1), 0);
  luapool_get_stats(lp, st);
  printf("order %d, hold %zu: %ld records, %llu spilled, peak held %llu bytes\n", order, hold,
         s->count, (unsigned long long)st->records_spilled, (unsigned long long)st->held_peak);
  CHECK_EQ(luapool_close(lp), 0);
  CHECK_EQ(s->failures, 0);
  CHECK_EQ(s->bad, 0);
  for (long v = 1; v <= N; v++)
    if (!s->got[v]) {
      CHECK(!"every record arrives");
      break;
    }
  free(s->got);
}

int main(void) {
  const size_t mb = 1024 * 1024;
  luapool_stats st;
  seen s;

  /* Completion order: records wait for the output, never on disk. */
  run(LUAPOOL_ORDER_COMPLETION, "0", mb, &st, &s);
  CHECK_EQ(s.count, N);
  CHECK_EQ(st.records, N);
  CHECK_EQ(st.records_spilled, 0);
  CHECK(st.held_peak > 0);
  CHECK(st.held_peak < 8 * mb); /* 1 MB, give or take a 64 KB batch per thread */

  /* Tree order behind a sleeper: what waits for its turn goes to disk and
   * comes back in order. */
  run(LUAPOOL_ORDER_TREE, "0.3", mb, &st, &s);
  CHECK_EQ(s.count, N + 1);
  CHECK_EQ(s.unordered, 0);
  CHECK_EQ(st.records, N + 1);
  CHECK(st.records_spilled > N / 2);
  CHECK(st.held_peak < 8 * mb);

  /* The API takes any bound, down to a byte: everything waits or spills. */
  run(LUAPOOL_ORDER_COMPLETION, "0", 1, &st, &s);
  CHECK_EQ(s.count, N);
  CHECK_EQ(st.records_spilled, 0);
  run(LUAPOOL_ORDER_TREE, "0.1", 1, &st, &s);
  CHECK_EQ(s.count, N + 1);
  CHECK_EQ(s.unordered, 0);
  CHECK(st.records_spilled > N / 2);
  return check_report("test_hold");
}

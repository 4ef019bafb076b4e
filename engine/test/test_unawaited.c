/*
 * test_unawaited.c - a run whose root task fails reports that failure from
 * luapool_wait every time, however the worker that ran the root and the
 * host waiting for it interleave: the failure is counted before the host
 * can see the root end. Many short engines, so that an ordering that lets
 * the host look first shows up.
 */
#include <string.h>

#include "check.h"
#include "luapool.h"

static void on_failure(void *ud, const char *msg) {
  (void)msg;
  ++*(int *)ud;
}

static const char script[] =
    "function boom() error('boom') end\n"
    "function main() end\n";

int main(void) {
  int rounds = 300, wrong = 0;
  for (int workers = 1; workers <= 2; workers++) {
    for (int i = 0; i < rounds; i++) {
      int failures = 0;
      luapool_config cfg;
      luapool_config_init(&cfg);
      cfg.workers = workers;
      cfg.on_failure = on_failure;
      cfg.ud = &failures;
      luapool *lp;
      CHECK_EQ(luapool_open(&cfg, &lp), 0);
      CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);
      CHECK_EQ(luapool_submit(lp, "boom", 0, NULL), 0);
      int rc = luapool_wait(lp, -1);
      if (rc != LUAPOOL_ETASKFAIL || failures != 1) wrong++;
      luapool_close(lp);
    }
  }
  CHECK_EQ(wrong, 0);
  return check_report("test_unawaited");
}

/*
 * worker_cmd.c - `luapool worker --broker URL`: its options; the worker
 * itself is engine/broker/worker.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bplace.h"
#include "worker_cmd.h"

static const char worker_usage[] =
    "usage: luapool worker --broker URL [--workers N | --processes N --threads T]\n"
    "\n"
    "Joins the broker and runs tasks of every run on it, until SIGINT or\n"
    "SIGTERM; then it hands back to the broker the tasks it holds.\n"
    "\n"
    "  --broker URL     redis://[user:password@]HOST:PORT[/DB]\n"
    "  --workers N      worker threads (default: the number of CPUs), in one\n"
    "                   worker process per run\n"
    "  --processes N    N worker processes per run instead ...\n"
    "  --threads T      ... of T threads each (default 1)\n"
    "  --run RUN        serve run RUN alone, and leave when it is over\n";

static int fail_usage(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "luapool: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, " (see luapool worker --help)\n");
  return 2;
}

static int count(const char *s, int min, int max, int *out) {
  char *end;
  errno = 0;
  long v = s ? strtol(s, &end, 10) : -1;
  if (!s || errno || end == s || *end || v < min || v > max) return -1;
  *out = (int)v;
  return 0;
}

int lp_cmd_worker(int argc, char **argv, int cpus) {
  const char *url = NULL, *only = NULL;
  int workers = -1, processes = 0, threads = 0;
  static const char *const takes_value[] = {"--broker", "--workers", "--processes", "--threads",
                                           "--run", NULL};
  for (int i = 0; i < argc; i += 2) { /* every option takes a value */
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(worker_usage, stdout);
      return 0;
    }
    int known = 0;
    for (int k = 0; takes_value[k]; k++) known |= strcmp(a, takes_value[k]) == 0;
    if (!known) return fail_usage("worker: unknown option '%s'%s", a, "");
    if (!val) return fail_usage("%s: expected a value, got nothing%s", a, "");
    if (strcmp(a, "--broker") == 0) {
      url = val;
    } else if (strcmp(a, "--workers") == 0) {
      if (count(val, 1, 1024, &workers))
        return fail_usage("%s: expected 1 to 1024, got '%s'", a, val);
    } else if (strcmp(a, "--processes") == 0) {
      if (count(val, 1, 1024, &processes))
        return fail_usage("%s: expected 1 to 1024, got '%s'", a, val);
    } else if (strcmp(a, "--threads") == 0) {
      if (count(val, 1, 1024, &threads))
        return fail_usage("%s: expected 1 to 1024, got '%s'", a, val);
    } else {
      only = val;
    }
  }
  if (!url) return fail_usage("worker needs --broker URL%s%s", "", "");
  if (threads && !processes) return fail_usage("--threads needs --processes%s%s", "", "");
  if (processes && workers > 0)
    return fail_usage("--workers and --processes are two ways to say one thing: pick one%s%s", "",
                      "");
  if (!processes) {
    processes = 1;
    threads = workers > 0 ? workers : cpus;
  }
  char err[1024];
  int rc = lp_broker_worker(url, processes, threads, only, err, sizeof err);
  if (rc == 2) return fail_usage("--broker: %s%s", err, "");
  if (rc != 0) fprintf(stderr, "luapool: %s\n", err);
  return rc;
}

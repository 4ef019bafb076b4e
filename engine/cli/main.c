/*
 * main.c - the `luapool` command: run or check a task script, or show what
 * a broker holds.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luapool.h"
#include "check.h"
#include "progress.h"
#include "status.h"
#include "engine.h"
#include "proc.h"
#include "worker_cmd.h"
#include "attach.h"

#ifndef LUAPOOL_VERSION_STRING
#define LUAPOOL_VERSION_STRING LUAPOOL_VERSION
#endif

enum {
  EXIT_OK = 0,
  EXIT_TASKFAIL = 1,
  EXIT_USAGE = 2,
  EXIT_INTERRUPTED = 130,
  EXIT_TERMINATED = 143
};

static const char usage_text[] =
    "usage: luapool run SCRIPT [ARGS...] [options]\n"
    "       luapool check SCRIPT\n"
    "       luapool worker --broker URL [--workers N | --processes N --threads T]\n"
    "       luapool status --broker URL\n"
    "       luapool attach RUN --broker URL [--format FORMAT] [--stats]\n"
    "       luapool --help | --version\n"
    "\n"
    "Runs main(ARGS...) of a Lua task script on a pool of workers; every task\n"
    "it spawns, at any depth, finishes before luapool exits. Records made by\n"
    "luapool.emit() and print() inside tasks go to stdout, one per line.\n"
    "\n"
    "options:\n"
    "  --workers N      worker threads (default: the number of CPUs); 0 runs\n"
    "                   every spawn inline, sequentially, on one thread\n"
    "  --processes N    N worker processes instead of threads: a task that\n"
    "                   crashes its process fails alone\n"
    "  --threads T      worker threads in each worker process (default 1)\n"
    "  --pool NAME=threads:N | NAME=processes:N[xT]\n"
    "                   an extra pool; spawn({pool = \"NAME\"}, ...) runs a task\n"
    "                   there (the default pool is called main)\n"
    "  --order ORDER    tree (default: the order of a sequential run),\n"
    "                   priority, or completion\n"
    "  --format FORMAT  text (default) or json\n"
    "  --retries N      run a failed task again, up to N times\n"
    "  --task-timeout S stop a task that runs longer than S seconds\n"
    "  --memory-limit BYTES  limit of each worker's Lua state (suffix k, m, g)\n"
    "  --hold SIZE      memory for records waiting to be written (default 32m);\n"
    "                   past it they wait in files under $TMPDIR, and tasks\n"
    "                   whose output falls behind wait for room\n"
    "  --fail-fast      cancel the run at the first failure nobody waits for\n"
    "  --progress       a live progress bar on stderr when it is a terminal\n"
    "                   (the default); --no-progress: none\n"
    "  --stats          a summary of the run on stderr at the end\n"
    "  --trace FILE     write the run as Chrome trace-event JSON (Perfetto)\n"
    "  --broker URL     run through Redis (redis://[user:password@]HOST:PORT[/DB]):\n"
    "                   tasks run on every `luapool worker` of that broker and on\n"
    "                   this host's --workers (0: it only submits and reports)\n"
    "  --lease S        with --broker: seconds a silent worker keeps its tasks\n"
    "                   before others claim them (default 10)\n"
    "  --                    the arguments that follow are all for main\n"
    "\n"
    "attach prints the whole output of a run on a broker (its submitter may\n"
    "have died: the run goes on on its workers), in order, exactly once, and\n"
    "exits with the run's status.\n"
    "\n"
    "check lists the script's task functions and warns of globals it reads\n"
    "but never defines or assigns inside functions, unknown luapool.* and\n"
    "standard library fields, and task names it does not define.\n"
    "\n"
    "status lists the runs a broker holds (script, state, tasks done, queued,\n"
    "running and failed, time so far) and the workers that serve it (host,\n"
    "pid, threads, last heartbeat, tasks run). The broker is a Redis 7:\n"
    "  --broker redis://[user:password@]HOST:PORT[/DB]\n"
    "                   user and password %-encoded where needed; no TLS\n"
    "                   (rediss://): reach a remote Redis through an SSH or\n"
    "                   stunnel tunnel\n"
    "\n"
    "exit status: 0 success; 1 a task failed (check: warnings; status: the\n"
    "broker cannot be reached or refused us); 2 bad usage, an invalid script\n"
    "or a bad URL; 130 interrupted (SIGINT); 143 terminated (SIGTERM).\n";

static const char **g_args; /* freed on every exit path, for leak checkers */
static const char **g_pools;

/* A usage error is one line: what was wrong and where the usage is. The
 * 35 lines of usage would bury the reason. */
static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...) {
  free(g_args);
  free(g_pools);
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "luapool: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " (see luapool --help)\n");
  va_end(ap);
  exit(EXIT_USAGE);
}

/* A flag's value that is missing or not what the flag takes. */
static void bad_value(const char *flag, const char *expected, const char *val) {
  if (val) usage_error("%s: expected %s, got '%s'", flag, expected, val);
  usage_error("%s: expected %s, got nothing", flag, expected);
}

static long parse_count(const char *flag, const char *s, long min, long max) {
  char *end;
  errno = 0;
  long v = s ? strtol(s, &end, 10) : -1;
  if (!s || errno || end == s || *end || v < min || v > max) {
    char what[96];
    snprintf(what, sizeof what, "a whole number from %ld to %ld", min, max);
    bad_value(flag, what, s);
  }
  return v;
}

static size_t parse_bytes(const char *flag, const char *s) {
  char *end;
  errno = 0;
  double v = s ? strtod(s, &end) : -1;
  double mult = 1;
  if (s && end != s && *end) {
    switch (*end) {
      case 'k':
      case 'K': mult = 1024.0; break;
      case 'm':
      case 'M': mult = 1024.0 * 1024; break;
      case 'g':
      case 'G': mult = 1024.0 * 1024 * 1024; break;
      default: mult = -1;
    }
    if (end[1] && !(end[1] == 'b' || end[1] == 'B')) mult = -1;
    end++;
    if (*end == 'b' || *end == 'B') end++;
  }
  if (!s || errno || end == s || *end || mult < 0 || v * mult < 1 || v * mult > 1e15)
    bad_value(flag, "a positive size in bytes (like 64m)", s);
  return (size_t)(v * mult);
}

typedef struct cli {
  int json;
  FILE *out;
  long failures;
  int out_tty;     /* stdout is a terminal: the bar is erased before each record */
  lp_progress bar; /* --progress */
} cli;

static void on_progress(void *ud, const luapool_stats *st) {
  lp_progress_draw(&((cli *)ud)->bar, st);
}

static void on_record(void *ud, const luapool_record *rec) {
  cli *c = ud;
  if (c->out_tty) lp_progress_clear(&c->bar);
  if (!c->json) {
    fwrite(rec->text, 1, rec->text_len, c->out);
    fputc('\n', c->out);
    return;
  }
  if (rec->json)
    fwrite(rec->json, 1, rec->json_len, c->out);
  else
    fputs("{}", c->out); /* cannot happen: the engine renders every record */
  fputc('\n', c->out);
}

static void on_flush(void *ud) { fflush(((cli *)ud)->out); }

/* Unawaited failures shown in full; past them a run of ten thousand failing
 * tasks says how many more there were instead of burying the output. */
#define FAILURES_SHOWN 10

static void on_failure(void *ud, const char *message) {
  cli *c = ud;
  if (++c->failures > FAILURES_SHOWN) return;
  lp_progress_clear(&c->bar);
  fflush(c->out);
  fprintf(stderr, "%s\n", message);
}

static luapool *g_engine;

static volatile sig_atomic_t g_signal; /* the first stopping signal */

static void on_signal(int sig) {
  static volatile sig_atomic_t count;
  if (++count > 1) _exit(128 + sig); /* a second signal: leave now */
  g_signal = sig;
  luapool_interrupt(g_engine);
}

static int load_script(luapool *lp, const char *path) {
  int rc = luapool_load_file(lp, path);
  if (rc != 0) {
    fprintf(stderr, "luapool: %s\n", luapool_errmsg(lp));
    /* The script is fine but the broker cannot be had: not a usage error. */
    return rc == LUAPOOL_ESYS && lp->cfg.broker ? EXIT_TASKFAIL : EXIT_USAGE;
  }
  if (!luapool_has_function(lp, "main")) {
    fprintf(stderr, "luapool: %s: the script defines no global function 'main'\n", path);
    return EXIT_USAGE;
  }
  return 0;
}

static int cmd_check(int argc, char **argv) {
  if (argc != 1) usage_error("check takes exactly one script");
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 0;
  luapool *lp;
  if (luapool_open(&cfg, &lp) != 0) {
    fprintf(stderr, "luapool: cannot start: out of memory\n");
    return EXIT_USAGE;
  }
  int rc = load_script(lp, argv[0]);
  if (rc == 0) {
    const char *const *names;
    int n = luapool_functions(lp, &names);
    printf("%s: ok, %d task function%s:", argv[0], n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) printf(" %s", names[i]);
    printf("\n");
  }
  luapool_close(lp);
  /* Then what its bytecode shows (-1: it does not compile, which the load
   * has reported). */
  int warnings = lp_check_script(argv[0], stdout);
  if (rc == 0 && warnings > 0) rc = EXIT_TASKFAIL;
  return rc;
}

static int g_attach; /* `luapool attach`: the script's place holds the run's id */

static int cmd_run(int argc, char **argv) {
  luapool_config cfg;
  luapool_config_init(&cfg);
  cli c = {0, stdout, 0, 0, {0}};
  int progress = 1, stats = 0;
  const char *script = NULL;
  const char **args = calloc((size_t)argc + 1, sizeof *args);
  const char **pools = calloc((size_t)argc + 1, sizeof *pools);
  int nargs = 0, only_args = 0, npools = 0;
  if (!pools || !args) {
    free(args);
    free(pools);
    return EXIT_USAGE;
  }
  g_pools = pools;
  g_args = args;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (only_args || a[0] != '-' || a[1] != '-') {
      if (!script)
        script = a;
      else
        args[nargs++] = a;
    } else if (strcmp(a, "--") == 0) {
      only_args = 1;
    } else if (strcmp(a, "--workers") == 0) {
      cfg.workers = (int)parse_count(a, val, 0, 1024);
      i++;
    } else if (strcmp(a, "--processes") == 0) {
      cfg.processes = (int)parse_count(a, val, 0, 1024);
      i++;
    } else if (strcmp(a, "--threads") == 0) {
      cfg.threads = (int)parse_count(a, val, 1, 1024);
      i++;
    } else if (strcmp(a, "--pool") == 0) {
      const char *eq = val ? strchr(val, '=') : NULL;
      if (!eq || eq == val) bad_value(a, "NAME=threads:N or NAME=processes:N[xT]", val);
      pools[npools++] = val;
      i++;
    } else if (strcmp(a, "--fail-fast") == 0) {
      cfg.fail_fast = 1;
    } else if (strcmp(a, "--order") == 0) {
      if (!val)
        bad_value(a, "tree, priority or completion", val);
      else if (strcmp(val, "tree") == 0)
        cfg.order = LUAPOOL_ORDER_TREE;
      else if (strcmp(val, "priority") == 0)
        cfg.order = LUAPOOL_ORDER_PRIORITY;
      else if (strcmp(val, "completion") == 0)
        cfg.order = LUAPOOL_ORDER_COMPLETION;
      else
        bad_value(a, "tree, priority or completion", val);
      i++;
    } else if (strcmp(a, "--format") == 0) {
      if (!val)
        bad_value(a, "text or json", val);
      else if (strcmp(val, "text") == 0)
        c.json = 0;
      else if (strcmp(val, "json") == 0)
        c.json = 1;
      else
        bad_value(a, "text or json", val);
      i++;
    } else if (strcmp(a, "--retries") == 0) {
      cfg.retries = (int)parse_count(a, val, 0, 1000000);
      i++;
    } else if (strcmp(a, "--task-timeout") == 0) {
      char *end;
      double v = val ? strtod(val, &end) : -1;
      if (!val || end == val || *end || !(v > 0) || v > 1e9)
        bad_value(a, "a positive number of seconds", val);
      cfg.task_timeout = v;
      i++;
    } else if (strcmp(a, "--broker") == 0) {
      if (!val || !*val) bad_value(a, "redis://[user:password@]HOST:PORT[/DB]", val);
      cfg.broker = val;
      i++;
    } else if (strcmp(a, "--lease") == 0) {
      char *end;
      double v = val ? strtod(val, &end) : -1;
      if (!val || end == val || *end || !(v >= 0.1) || v > 1e6)
        bad_value(a, "a number of seconds of at least 0.1", val);
      cfg.lease = v;
      i++;
    } else if (strcmp(a, "--hold") == 0) {
      cfg.hold = parse_bytes(a, val);
      if (cfg.hold < 1024 * 1024) bad_value(a, "a size of 1m or more", val);
      i++;
    } else if (strcmp(a, "--memory-limit") == 0) {
      cfg.memory_limit = parse_bytes(a, val);
      i++;
    } else if (strcmp(a, "--progress") == 0 || strcmp(a, "--no-progress") == 0) {
      progress = a[2] == 'p';
    } else if (strcmp(a, "--stats") == 0) {
      stats = 1;
    } else if (strcmp(a, "--trace") == 0) {
      if (!val || !*val) bad_value(a, "a file name", val && *val ? val : NULL);
      FILE *f = fopen(val, "w"); /* fail now, with the system's reason, rather than after the run */
      if (!f) { /* a system error, not a misuse: its reason is all there is to say */
        fprintf(stderr, "luapool: --trace %s: %s\n", val, strerror(errno));
        free(args);
        free(pools);
        g_args = g_pools = NULL;
        return EXIT_USAGE;
      }
      fclose(f);
      cfg.trace_path = val;
      i++;
    } else {
      usage_error("unknown option '%s'", a);
    }
  }
  if (!script) usage_error(g_attach ? "attach needs a run's id" : "run needs a script");
  lp_attach_info at = {0};
  if (g_attach) {
    if (!cfg.broker) usage_error("attach needs --broker URL");
    if (nargs) usage_error("attach takes one run id, not '%s'", args[0]);
    char err[1024];
    int rc = lp_attach_fetch(cfg.broker, script, &at, err, sizeof err);
    if (rc != 0) {
      free(args);
      free(pools);
      g_args = g_pools = NULL;
      fprintf(stderr, "luapool: %s\n", err);
      return rc == 2 ? EXIT_USAGE : EXIT_TASKFAIL;
    }
    cfg.broker_run = script;
    cfg.order = at.order;
    cfg.workers = 0; /* the run's workers run it */
  }
  if (cfg.threads > 0 && cfg.processes == 0) usage_error("--threads needs --processes");
  if (cfg.lease > 0 && !cfg.broker) usage_error("--lease needs --broker");
  if (cfg.broker && (cfg.processes || npools))
    usage_error(
        "--broker runs the run's tasks on the broker's workers: give them --processes, "
        "not the run (and no --pool)");
  cfg.json_records = c.json;
  cfg.on_record = on_record;
  cfg.on_failure = on_failure;
  cfg.on_flush = on_flush;
  if (lp_progress_wanted(progress)) cfg.on_progress = on_progress;
  c.out_tty = isatty(STDOUT_FILENO);
  cfg.ud = &c;
  luapool *lp;
  int rc = luapool_open(&cfg, &lp);
  if (rc != 0) {
    fprintf(stderr, "luapool: cannot start: %s\n", luapool_strerror(rc));
    free(args);
    free(pools);
    g_args = g_pools = NULL;
    return EXIT_USAGE;
  }
  for (int i = 0; i < npools; i++) {
    const char *eq = strchr(pools[i], '=');
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)(eq - pools[i]), pools[i]);
    if (luapool_add_pool(lp, name, eq + 1) != 0) {
      fprintf(stderr, "luapool: --pool %s: %s (see luapool --help)\n", pools[i],
              luapool_errmsg(lp));
      luapool_close(lp);
      free(args);
      free(pools);
      g_args = g_pools = NULL;
      return EXIT_USAGE;
    }
  }
  int exit_code;
  if (g_attach) {
    int rc2 = luapool_load_string(lp, at.source, at.source_len, at.chunkname);
    exit_code = rc2 == 0 ? 0 : rc2 == LUAPOOL_ESYS ? EXIT_TASKFAIL : EXIT_USAGE;
    if (rc2 != 0) fprintf(stderr, "luapool: %s\n", luapool_errmsg(lp));
    lp_attach_free(&at);
  } else {
    exit_code = load_script(lp, script);
  }
  if (exit_code == 0) {
    g_engine = lp;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A spill file past a file-size limit (ulimit -f) is an error to report
     * (exit 1, the reason named), not a reason to die with a core. */
    signal(SIGXFSZ, SIG_IGN);
    lp->root_is_run = 1; /* main is the run: the task limits are for what it spawns */
    rc = luapool_submit(lp, "main", nargs, args);
    if (rc == 0) rc = luapool_wait(lp, -1);
    lp_progress_clear(&c.bar);
    if (stats) lp_progress_summary(lp, stderr);
    if (rc == LUAPOOL_EINTERRUPTED)
      exit_code = g_signal == SIGTERM ? EXIT_TERMINATED : EXIT_INTERRUPTED;
    else if (rc != 0 && rc != LUAPOOL_ETASKFAIL) {
      fprintf(stderr, "luapool: %s\n", luapool_errmsg(lp));
      exit_code = EXIT_TASKFAIL;
    }
  }
  luapool_close(lp); /* may report more failures: futures collected at the end */
  g_engine = NULL;
  fflush(c.out);
  free(args);
  free(pools);
  g_args = g_pools = NULL;
  if (c.failures > FAILURES_SHOWN)
    fprintf(stderr, "luapool: %ld more tasks failed and nothing waited for them\n",
            c.failures - FAILURES_SHOWN);
  if (exit_code == 0 && c.failures > 0) exit_code = EXIT_TASKFAIL;
  return exit_code;
}

static int cmd_status(int argc, char **argv) {
  const char *url = NULL;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--broker") == 0) {
      if (i + 1 >= argc) bad_value(argv[i], "a URL, redis://[user:password@]HOST:PORT[/DB]", NULL);
      url = argv[++i];
    } else {
      usage_error("status: unknown option '%s'", argv[i]);
    }
  }
  if (!url) usage_error("status needs --broker redis://[user:password@]HOST:PORT[/DB]");
  int rc = lp_status_main(url, stdout);
  fflush(stdout);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage_text, stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  /* The worker-process role: the engine runs this binary, fd 3 its socket. */
  if (strcmp(cmd, "__worker") == 0) return lp_procworker_main(3, 3);
  lp_worker_exe = "/proc/self/exe";
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage_text, stdout);
    return EXIT_OK;
  }
  if (strcmp(cmd, "--version") == 0) {
    printf("luapool %s (%s)\n", LUAPOOL_VERSION_STRING, "Lua 5.4");
    return EXIT_OK;
  }
  if (strcmp(cmd, "run") == 0) return cmd_run(argc - 2, argv + 2);
  if (strcmp(cmd, "check") == 0) return cmd_check(argc - 2, argv + 2);
  if (strcmp(cmd, "worker") == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return lp_cmd_worker(argc - 2, argv + 2, cpus > 0 ? (int)cpus : 1);
  }
  if (strcmp(cmd, "status") == 0) return cmd_status(argc - 2, argv + 2);
  if (strcmp(cmd, "attach") == 0) {
    g_attach = 1;
    return cmd_run(argc - 2, argv + 2);
  }
  usage_error("unknown command '%s'", cmd);
  return EXIT_USAGE;
}

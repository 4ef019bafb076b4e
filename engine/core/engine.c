/*
 * engine.c - the engine object: one run's configuration, its start, its
 * roots in flight, the host's wait and its end. The public API (api/) is a
 * face over these functions; the core calls in here when a root's subtree
 * ends, when a failure nobody awaited must be reported, and for a cancel.
 *
 * DESIGN. The host thread submits roots, then waits in lp_engine_wait,
 * which is also where records and failure reports are delivered
 * (report.c), so callbacks always run on the host's own thread; in inline
 * mode the host runs the tasks there too.
 *
 * host_lock (in struct luapool) guards the count of roots in flight and the
 * workers' start-up handshake (workers_go, each worker's start_rc); host_cond
 * wakes the host when a root ends or a future's task finishes, and the
 * workers when the host gives the go. It is taken only in this file, never
 * while Lua runs, and no other lock is taken under it.
 *
 * Open engines are kept in one list under open_lock, and every entry point
 * of the public face checks its handle against it (lp_engine_is_open), so a
 * handle used after luapool_close is refused rather than dereferenced.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "pool.h"
#include "timer.h"
#include "vm.h"

/* ---- the list of open engines ---- */

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static luapool *open_list;

int lp_engine_is_open(const luapool *lp) {
  if (!lp) return 0;
  pthread_mutex_lock(&open_lock);
  const luapool *e = open_list;
  while (e && e != lp) e = e->next_open;
  pthread_mutex_unlock(&open_lock);
  return e != NULL;
}

static void add_open(luapool *lp) {
  pthread_mutex_lock(&open_lock);
  lp->next_open = open_list;
  open_list = lp;
  pthread_mutex_unlock(&open_lock);
}

int lp_engine_unlist(luapool *lp) {
  pthread_mutex_lock(&open_lock);
  luapool **pp = &open_list;
  while (*pp && *pp != lp) pp = &(*pp)->next_open;
  int found = *pp != NULL;
  if (found) *pp = lp->next_open;
  pthread_mutex_unlock(&open_lock);
  return found;
}

int lp_engine_error(luapool *eng, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (msg) {
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  free(eng->errmsg);
  eng->errmsg = msg; /* NULL: out of memory, which luapool_errmsg says */
  return err;
}

/* ---- configuration: before the script ---- */

int lp_engine_new(const luapool_config *cfg, luapool **out) {
  *out = NULL;
  if (cfg->workers < 0 || cfg->workers > 4096 || cfg->processes < 0 || cfg->processes > 1024 ||
      cfg->threads < 0 || cfg->threads > 4096 || cfg->task_timeout < 0 || cfg->retries < 0 ||
      cfg->lease < 0 || cfg->order < LUAPOOL_ORDER_TREE || cfg->order > LUAPOOL_ORDER_COMPLETION)
    return LUAPOOL_EINVAL;
  luapool *eng = calloc(1, sizeof *eng);
  if (!eng) return LUAPOOL_ENOMEM;
  eng->cfg = *cfg;
  /* The engine keeps its own copy: a host may free its string once open. */
  eng->cfg.broker = NULL;
  if (cfg->broker && !(eng->broker = strdup(cfg->broker))) {
    free(eng);
    return LUAPOOL_ENOMEM;
  }
  eng->cfg.broker = eng->broker;
  eng->cfg.broker_run = NULL;
  if (cfg->broker_run && !(eng->broker_run = strdup(cfg->broker_run))) {
    free(eng->broker);
    free(eng);
    return LUAPOOL_ENOMEM;
  }
  eng->cfg.broker_run = eng->broker_run;
  eng->inline_mode = cfg->workers == 0 && cfg->processes == 0 && !cfg->broker;
  atomic_init(&eng->next_id, 1);
  pthread_mutex_init(&eng->host_lock, NULL);
  pthread_cond_init(&eng->host_cond, NULL);
  if (lp_names_init(&eng->names) != 0 || !(eng->pools = calloc(1, sizeof *eng->pools)) ||
      !(eng->pools[0].name = strdup("main"))) {
    lp_engine_free(eng);
    return LUAPOOL_ENOMEM;
  }
  eng->npools = 1;
  eng->pools[0].processes = cfg->processes;
  eng->pools[0].n = cfg->workers;
  eng->pools[0].threads = cfg->threads > 0 ? cfg->threads : 1;
  add_open(eng);
  *out = eng;
  return 0;
}

int lp_engine_pool(luapool *eng, const char *name, size_t len) {
  for (int i = 0; i < eng->npools; i++)
    if (strlen(eng->pools[i].name) == len && memcmp(eng->pools[i].name, name, len) == 0) return i;
  return -1;
}

int lp_engine_add_pool(luapool *lp, const char *name, const char *spec) {
  if (lp->phase != LP_PHASE_OPEN)
    return lp_engine_error(lp, LUAPOOL_ESTATE, "pools must be added before the script");
  size_t len = strlen(name);
  if (len == 0 || len > 64 ||
      strspn(name,
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
             "0123456789_-.") != len)
    return lp_engine_error(lp, LUAPOOL_EINVAL,
                           "pool name '%s': use letters, digits, '_', '-' or '.'", name);
  if (lp_engine_pool(lp, name, len) >= 0)
    return lp_engine_error(lp, LUAPOOL_EINVAL, "there is already a pool named '%s'", name);
  lp_pooldef d = {0};
  char *end;
  long n, t = 1;
  if (strncmp(spec, "threads:", 8) == 0) {
    n = strtol(spec + 8, &end, 10);
    if (end == spec + 8 || *end || n < 1 || n > 1024) goto bad;
    d.n = (int)n;
  } else if (strncmp(spec, "processes:", 10) == 0) {
    n = strtol(spec + 10, &end, 10);
    if (end == spec + 10 || n < 1 || n > 1024) goto bad;
    if (*end == 'x') {
      const char *ts = end + 1;
      t = strtol(ts, &end, 10);
      if (end == ts || t < 1 || t > 1024) goto bad;
    }
    if (*end) goto bad;
    d.processes = (int)n;
    d.threads = (int)t;
  } else {
    goto bad;
  }
  lp_pooldef *p = realloc(lp->pools, sizeof *p * (size_t)(lp->npools + 1));
  if (!p) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  lp->pools = p;
  if (!(d.name = strdup(name))) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  lp->pools[lp->npools++] = d;
  return 0;
bad:
  return lp_engine_error(lp, LUAPOOL_EINVAL,
                         "pool '%s': '%s' is not threads:N or processes:N or processes:NxT", name,
                         spec);
}

int lp_engine_add_module(luapool *lp, const char *name, luapool_open_fn open) {
  if (lp->phase != LP_PHASE_OPEN)
    return lp_engine_error(lp, LUAPOOL_ESTATE, "modules must be registered before the script");
  void *m = realloc(lp->modules, sizeof *lp->modules * (size_t)(lp->nmodules + 1));
  if (!m) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  lp->modules = m;
  if (!(lp->modules[lp->nmodules].name = strdup(name)))
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  lp->modules[lp->nmodules++].open = open;
  return 0;
}

/* ---- start: the script, the workers ---- */

/* How many engine threads each pool gets, and which: a thread pool its
 * N workers; the main pool, when it is made of processes, one thread that
 * runs the roots; other process pools none. In inline mode one thread runs
 * everything. */
static int plan_workers(luapool *lp) {
  int total = 0;
  for (int i = 0; i < lp->npools; i++) {
    lp_pooldef *d = &lp->pools[i];
    d->first_worker = total;
    d->nworkers = lp->inline_mode ? (i == 0) : d->processes || d->roots_away ? (i == 0) : d->n;
    total += d->nworkers;
  }
  lp->nworkers = total;
  int *pool_of = malloc(sizeof *pool_of * (size_t)(total > 0 ? total : 1));
  if (!pool_of) return -1;
  for (int i = 0; i < lp->npools; i++)
    for (int k = 0; k < lp->pools[i].nworkers; k++) pool_of[lp->pools[i].first_worker + k] = i;
  int rc = lp_sched_init(&lp->sched, total) != 0 ||
           (!lp->inline_mode && lp_sched_set_pools(&lp->sched, lp->npools, pool_of) != 0) ||
           lp_report_init(&lp->report, lp, lp->cfg.order, total) != 0;
  free(pool_of);
  lp->sched.one_level = lp->inline_mode;
  return rc ? -1 : 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int lp_engine_load(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (lp->phase != LP_PHASE_OPEN)
    return lp_engine_error(lp, LUAPOOL_ESTATE, "a script is already loaded");
  char *err = NULL;
  if (lp_vm_check(chunk, len, chunkname, &err) != 0) {
    int rc = lp_engine_error(lp, LUAPOOL_ESCRIPT, "%s", err ? err : "out of memory");
    free(err);
    return rc;
  }
  lp->script = malloc(len + 1);
  lp->chunkname = strdup(chunkname);
  if (!lp->script || !lp->chunkname) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  memcpy(lp->script, chunk, len);
  lp->script[len] = '\0';
  lp->script_len = len;
  if (plan_workers(lp) != 0) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  int rc = lp_pool_start(lp);
  if (rc == 0) rc = lp_places_start(lp);
  if (rc != 0) return rc;
  if (lp->ndefined > 1) qsort(lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names);
  lp->phase = LP_PHASE_RUNNING;
  return 0;
}

int lp_engine_defines(luapool *lp, const char *name) {
  if (!lp->defined) return 0;
  return bsearch(&name, lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names) != NULL;
}

int lp_engine_worker_started(luapool *eng, int *start_rc, int rc) {
  pthread_mutex_lock(&eng->host_lock);
  *start_rc = rc ? rc : 1;
  pthread_cond_broadcast(&eng->host_cond);
  while (!eng->workers_go) pthread_cond_wait(&eng->host_cond, &eng->host_lock);
  int go = eng->workers_go > 0;
  pthread_mutex_unlock(&eng->host_lock);
  return go;
}

int lp_engine_worker_ready(luapool *eng, const int *start_rc) {
  pthread_mutex_lock(&eng->host_lock);
  while (!*start_rc) pthread_cond_wait(&eng->host_cond, &eng->host_lock);
  int rc = *start_rc;
  pthread_mutex_unlock(&eng->host_lock);
  return rc;
}

void lp_engine_workers_go(luapool *eng, int go) {
  pthread_mutex_lock(&eng->host_lock);
  eng->workers_go = go;
  pthread_cond_broadcast(&eng->host_cond);
  pthread_mutex_unlock(&eng->host_lock);
}

/* ---- roots ---- */

/* Checks opts and sets the pool's index (*pool), the time limit and the
 * retries of a root; 0 or an error with the handle's message. */
static int check_opts(luapool *lp, const luapool_task_opts *o, int *pool, double *timeout,
                      int *retries) {
  *pool = 0;
  /* The CLI's main is the run itself: the run's limits are for what it
   * spawns. An option given on the submit still applies. */
  *timeout = lp->root_is_run ? 0 : lp->cfg.task_timeout;
  *retries = lp->root_is_run ? 0 : lp->cfg.retries;
  if (!o) return 0;
  if (o->priority != o->priority)
    return lp_engine_error(lp, LUAPOOL_EINVAL, "option 'priority' is NaN");
  if (o->timeout != o->timeout)
    return lp_engine_error(lp, LUAPOOL_EINVAL, "option 'timeout' is NaN");
  if (o->timeout >= 0) *timeout = o->timeout;
  if (o->retries > 1000000)
    return lp_engine_error(lp, LUAPOOL_EINVAL, "option 'retries' must be a whole number from 0");
  if (o->retries >= 0) *retries = o->retries;
  if (o->pool) {
    *pool = lp_engine_pool(lp, o->pool, strlen(o->pool));
    if (*pool < 0) {
      char names[512] = "";
      size_t used = 0;
      for (int i = 0; i < lp->npools && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                 lp->pools[i].name);
      return lp_engine_error(lp, LUAPOOL_EINVAL, "no pool named '%s' (pools: %s)", o->pool, names);
    }
  }
  return 0;
}

/* A root's waiter that wakes the host when the root finishes. It belongs to
 * the task's waiter list until it fires, and frees itself then, so whoever
 * holds the root (a future) may let go at any moment without racing the
 * finishing worker. */
static void fire_host(lp_waiter *w, lp_task *done) {
  luapool *eng = done->eng;
  pthread_mutex_lock(&eng->host_lock);
  pthread_cond_broadcast(&eng->host_cond);
  pthread_mutex_unlock(&eng->host_lock);
  free(w);
}

int lp_engine_submit(luapool *lp, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     lp_task **root) {
  if (root) *root = NULL;
  if (lp->phase != LP_PHASE_RUNNING) {
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  }
  if (!lp_engine_defines(lp, fn)) {
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ENOTASK, "no task function named '%s' in the script", fn);
  }
  int pool, retries;
  double timeout;
  int bad = check_opts(lp, opts, &pool, &timeout, &retries);
  if (bad) {
    lp_buf_free(args);
    return bad;
  }
  int id = lp_names_intern(&lp->names, fn, strlen(fn));
  lp_waiter *wake = root ? malloc(sizeof *wake) : NULL;
  if (id < 0 || (root && !wake)) {
    free(wake);
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  lp_task *t = lp_task_new(lp, NULL, id, opts ? opts->priority : 0, args);
  if (!t) {
    free(wake);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  t->timeout = timeout;
  t->retries = retries;
  t->pool = pool;
  if (root) {
    lp_task_ref(t);
    wake->fire = fire_host;
    lp_task_watch(t, wake); /* not yet queued: it cannot have finished */
    *root = t;
  }
  lp_engine_add_roots(lp, 1);
  lp_report_root(&lp->report, t);
  if (lp->inline_mode) {
    lp_sched_push(&lp->sched, 0, t);
  } else if ((pool != 0 || lp->pools[0].roots_away) && lp->pools[pool].place) {
    /* Another pool's processes: the main pool's roots run on an engine
     * thread, a root sent elsewhere runs where its pool's tasks do. */
    if (lp_place_push(lp, t) < 0) {
      atomic_store(&t->awaited, 1); /* the failed submit says it */
      lp_task_finish(t, LP_TASK_FAILED, NULL);
      if (root) {
        lp_task_unref(t);
        *root = NULL;
      }
      return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
    }
  } else {
    lp_sched_inject(&lp->sched, t);
  }
  return 0;
}

void lp_engine_add_roots(luapool *eng, long n) {
  pthread_mutex_lock(&eng->host_lock);
  eng->live_roots += n;
  pthread_mutex_unlock(&eng->host_lock);
}

void lp_engine_root_done(luapool *eng, lp_task *root) {
  if (eng->up) eng->up->ops->root_done(eng->up, root);
  pthread_mutex_lock(&eng->host_lock);
  eng->live_roots--;
  if (eng->live_roots == 0) pthread_cond_broadcast(&eng->host_cond);
  pthread_mutex_unlock(&eng->host_lock);
}

static long live_roots(luapool *eng) {
  pthread_mutex_lock(&eng->host_lock);
  long live = eng->live_roots;
  pthread_mutex_unlock(&eng->host_lock);
  return live;
}

void lp_engine_unawaited_failure(luapool *eng, lp_task *t) {
  atomic_fetch_add(&eng->unawaited_failures, 1);
  const char *msg = "(no message)";
  size_t len = strlen(msg);
  lp_pack_single_string(t->result.data, t->result.len, &msg, &len);
  const char *name = lp_names_get(&eng->names, t->fn);
  const char *args = t->failnote ? t->failnote : "()";
  size_t n = len + strlen(name) + strlen(args) + 128;
  char *text = malloc(n);
  if (!text) return;
  snprintf(text, n,
           "luapool: task '%s' (id %llu) failed and nothing waited for it\n"
           "  arguments: %s\n  %.*s",
           name, (unsigned long long)t->id, args, (int)len, msg);
  lp_report_failure(&eng->report, text);
  free(text);
  if (eng->cfg.fail_fast) lp_engine_cancel(eng); /* any thread: no handle check */
}

void lp_engine_cancel(luapool *lp) {
  atomic_store(&lp->stopping, 1);
  atomic_fetch_add(&lp->cancel_epoch, 1);
  lp_places_cancel_all(lp);
  lp_pool_stop_lua(lp); /* a task that never waits stops too */
  /* Parked workers must see it: they fire all their timers at once, so
   * sleepers resume and find themselves cancelled. */
  lp_sched_wake_all(&lp->sched);
}

/* ---- the host's wait ---- */

/* A deadlock: every worker sleeps with no timer to come and nothing
 * queued, so no task can wake another; the host could, but it is waiting
 * without a timeout. With process pools, also no task is left with them:
 * a task in a worker process cannot wait for one of this process (no
 * future, channel or sequencer crosses), so while one is there it will
 * end and may wake ours. (The engine inside a worker process is not
 * judged: its roots belong to the engine's run.) On a deadlock the error
 * names the waiting tasks, and the run is cancelled: each ends where it
 * waits. Returns 1 then. */
static int deadlocked(luapool *lp) {
  if (lp->up || lp_hold_waiting(&lp->report)) return 0; /* the host wakes those */
  if (!lp_places_idle(lp) || !lp_sched_stalled(&lp->sched)) return 0;
  char list[2048];
  int n = lp_pool_describe_waits(lp, list, sizeof list);
  /* Processes first: a task they give back wakes its waiter before it
   * stops counting as held, so the look at the workers after sees it. */
  if (n == 0 || !lp_places_idle(lp) || !lp_sched_stalled(&lp->sched)) return 0;
  lp_engine_error(lp, LUAPOOL_EDEADLOCK,
                  "deadlock: %d task%s wait%s for what no task can give any more:%s", n,
                  n == 1 ? "" : "s", n == 1 ? "s" : "", list);
  /* The waiting tasks are read while every worker still sleeps (the cancel
   * wakes them all); they are woken after `stopping`, so they end. */
  atomic_store(&lp->stopping, 1);
  atomic_fetch_add(&lp->cancel_epoch, 1);
  lp_pool_wake_waits(lp);
  lp_engine_cancel(lp);
  return 1;
}

int lp_engine_wait(luapool *lp, double timeout, int (*until)(void *ud), void *ud) {
  if (lp->phase != LP_PHASE_RUNNING) return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  double deadline = timeout >= 0 ? lp_now() + timeout : -1;
  int rc = 0;
  long live = 0;
  if (lp->inline_mode) {
    rc = lp_pool_run_inline(lp, lp->tick);
    if (rc == LUAPOOL_EDEADLOCK)
      lp_engine_error(lp, rc, "deadlock: tasks wait for something that can never happen");
  } else {
    int stalls = 0, deadlock = 0;
    for (;;) {
      lp_report_deliver(&lp->report, 0);
      if (lp->tick) lp->tick(lp);
      if (atomic_load(&lp->interrupted) && !atomic_load(&lp->stopping)) lp_engine_cancel(lp);
      /* Judged after a few looks in a row: a cheap guard on top of the
       * exact test in lp_sched_stalled. */
      if (timeout < 0 && !deadlock && !atomic_load(&lp->stopping) &&
          (lp_sched_stalled(&lp->sched) ? ++stalls : (stalls = 0)) >= 3)
        deadlock = deadlocked(lp);
      if (deadlock && rc == 0) rc = LUAPOOL_EDEADLOCK;
      pthread_mutex_lock(&lp->host_lock);
      live = lp->live_roots;
      /* Nothing is left to wait for once no task is (a host future's task
       * has ended then too; a records loop has had every record). */
      int waiting = live > 0 && (!until || !until(ud));
      if (waiting) {
        /* Records are picked up every millisecond: streaming without a
         * wake-up per record. */
        double now = lp_now();
        if (deadline >= 0 && now >= deadline) {
          pthread_mutex_unlock(&lp->host_lock);
          rc = LUAPOOL_ETIMEDOUT;
          break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
          ts.tv_sec++;
          ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&lp->host_cond, &lp->host_lock, &ts);
      }
      pthread_mutex_unlock(&lp->host_lock);
      if (!waiting) break;
    }
  }
  /* The run is over when no root is left (priority order lets go then). */
  if (lp->inline_mode || until) live = live_roots(lp);
  lp_report_deliver(&lp->report, rc != LUAPOOL_ETIMEDOUT && live == 0);
  if (atomic_load(&lp->report.spill_failed)) { /* records could not be held: the run failed */
    pthread_mutex_lock(&lp->report.fail_lock);
    rc = lp_engine_error(lp, LUAPOOL_ESYS, "%s",
                         lp->report.spill_error ? lp->report.spill_error
                                                : "cannot write a spill file: out of memory");
    pthread_mutex_unlock(&lp->report.fail_lock);
  }
  if (rc == 0 && atomic_load(&lp->interrupted)) rc = LUAPOOL_EINTERRUPTED;
  if (rc == 0 && atomic_load(&lp->unawaited_failures)) rc = LUAPOOL_ETASKFAIL;
  return rc;
}

/* ---- the end ---- */

void lp_engine_drain(luapool *lp) {
  if (lp->phase == LP_PHASE_RUNNING && live_roots(lp) > 0) {
    lp_engine_cancel(lp);
    lp_engine_wait(lp, -1, NULL, NULL);
  }
}

void lp_engine_stop(luapool *lp) {
  lp->phase = LP_PHASE_CLOSING;
  lp_places_stop(lp);
  lp_pool_stop(lp);
}

void lp_engine_free(luapool *lp) {
  lp_report_free(&lp->report);
  lp_pool_free(lp);
  lp_sched_free(&lp->sched);
  lp_names_free(&lp->names);
  free(lp->broker);
  free(lp->broker_run);
  free(lp->script);
  free(lp->chunkname);
  free(lp->errmsg);
  for (int i = 0; i < lp->nmodules; i++) free(lp->modules[i].name);
  free(lp->modules);
  for (int i = 0; i < lp->ndefined; i++) free(lp->defined[i]);
  free(lp->defined);
  for (int i = 0; i < lp->npools; i++) free(lp->pools[i].name);
  free(lp->pools);
  pthread_mutex_destroy(&lp->host_lock);
  pthread_cond_destroy(&lp->host_cond);
  free(lp);
}

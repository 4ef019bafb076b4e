/*
 * api.c - the public C API of luapool.h.
 *
 * The host thread submits roots, then waits in luapool_wait, which is also
 * where records and failure reports are delivered (report.c), so callbacks
 * always run on the host's own thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "engine.h"
#include "pool.h"
#include "proc.h"
#include "sync.h"
#include "timer.h"
#include "trace.h"
#include "vm.h"

const char *luapool_strerror(int err) {
  switch (err) {
    case 0: return "success";
#define LP_ERRNO_CASE(name, value, text) \
  case LUAPOOL_E##name: return text;
      LUAPOOL_ERRNO_MAP(LP_ERRNO_CASE)
#undef LP_ERRNO_CASE
    default: return "unknown error";
  }
}

void luapool_config_init(luapool_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n > 0 ? (int)n : 1;
  cfg->order = LUAPOOL_ORDER_TREE;
}

int lp_engine_error(luapool *eng, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(eng->errmsg, sizeof eng->errmsg, fmt, ap);
  va_end(ap);
  return err;
}

const char *luapool_errmsg(luapool *lp) { return lp ? lp->errmsg : "no engine"; }

int luapool_open(const luapool_config *cfg, luapool **out) {
  if (!out) return LUAPOOL_EINVAL;
  *out = NULL;
  if (!cfg || cfg->workers < 0 || cfg->workers > 4096 || cfg->processes < 0 ||
      cfg->processes > 1024 || cfg->threads < 0 || cfg->threads > 4096 || cfg->task_timeout < 0 ||
      cfg->retries < 0 || cfg->order < LUAPOOL_ORDER_TREE || cfg->order > LUAPOOL_ORDER_COMPLETION)
    return LUAPOOL_EINVAL;
  luapool *eng = calloc(1, sizeof *eng);
  if (!eng) return LUAPOOL_ENOMEM;
  eng->cfg = *cfg;
  eng->inline_mode = cfg->workers == 0 && cfg->processes == 0;
  atomic_init(&eng->next_id, 1);
  pthread_mutex_init(&eng->host_lock, NULL);
  pthread_cond_init(&eng->host_cond, NULL);
  pthread_mutex_init(&eng->counters_lock, NULL);
  if (lp_names_init(&eng->names) != 0 || !(eng->pools = calloc(1, sizeof *eng->pools)) ||
      !(eng->pools[0].name = strdup("main"))) {
    luapool_close(eng);
    return LUAPOOL_ENOMEM;
  }
  eng->npools = 1;
  eng->pools[0].processes = cfg->processes;
  eng->pools[0].n = cfg->workers;
  eng->pools[0].threads = cfg->threads > 0 ? cfg->threads : 1;
  *out = eng;
  return 0;
}

int lp_engine_pool(luapool *eng, const char *name, size_t len) {
  for (int i = 0; i < eng->npools; i++)
    if (strlen(eng->pools[i].name) == len && memcmp(eng->pools[i].name, name, len) == 0) return i;
  return -1;
}

int luapool_add_pool(luapool *lp, const char *name, const char *spec) {
  if (!lp || !name || !spec) return LUAPOOL_EINVAL;
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

/* How many engine threads each pool gets, and which: a thread pool its
 * N workers; the main pool, when it is made of processes, one thread that
 * runs the roots; other process pools none. In inline mode one thread runs
 * everything. */
static int plan_workers(luapool *lp) {
  int total = 0;
  for (int i = 0; i < lp->npools; i++) {
    lp_pooldef *d = &lp->pools[i];
    d->first_worker = total;
    d->nworkers = lp->inline_mode ? (i == 0) : d->processes ? (i == 0) : d->n;
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

int luapool_register_module(luapool *lp, const char *name, luapool_open_fn open) {
  if (!lp || !name || !open) return LUAPOOL_EINVAL;
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

static int cmp_names(const void *a, const void *b);

static int load(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (lp->phase != LP_PHASE_OPEN)
    return lp_engine_error(lp, LUAPOOL_ESTATE, "a script is already loaded");
  char err[1024];
  if (lp_vm_check(chunk, len, chunkname, err, sizeof err) != 0)
    return lp_engine_error(lp, LUAPOOL_ESCRIPT, "%s", err);
  lp->script = malloc(len + 1);
  lp->chunkname = strdup(chunkname);
  if (!lp->script || !lp->chunkname) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  memcpy(lp->script, chunk, len);
  lp->script[len] = '\0';
  lp->script_len = len;
  if (plan_workers(lp) != 0) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  int rc = lp_pool_start(lp);
  if (rc == 0) rc = lp_procs_start(lp);
  if (rc != 0) return rc;
  if (lp->ndefined > 1) qsort(lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names);
  lp->phase = LP_PHASE_RUNNING;
  return 0;
}

int luapool_load_string(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (!lp || !chunk) return LUAPOOL_EINVAL;
  return load(lp, chunk, len, chunkname ? chunkname : "=script");
}

int luapool_load_file(luapool *lp, const char *path) {
  if (!lp || !path) return LUAPOOL_EINVAL;
  FILE *f = fopen(path, "rb");
  if (!f) return lp_engine_error(lp, LUAPOOL_ESCRIPT, "cannot open %s: %s", path, strerror(errno));
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int rd_err = ferror(f);
  fclose(f);
  if (!buf) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory reading %s", path);
  if (rd_err) {
    free(buf);
    return lp_engine_error(lp, LUAPOOL_ESCRIPT, "cannot read %s", path);
  }
  /* Skip a first line starting with '#', as lua does. */
  size_t skip = 0;
  if (len > 0 && buf[0] == '#') {
    while (skip < len && buf[skip] != '\n') skip++;
  }
  size_t nlen = strlen(path) + 2;
  char *chunkname = malloc(nlen);
  if (!chunkname) {
    free(buf);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  snprintf(chunkname, nlen, "@%s", path);
  /* Keep the line count right when a '#' line was skipped. */
  int rc = load(lp, buf + skip, len - skip, chunkname);
  free(chunkname);
  free(buf);
  return rc;
}

int luapool_submit(luapool *lp, const char *fn, int argc, const char *const *argv) {
  if (!lp || !fn || argc < 0 || (argc > 0 && !argv)) return LUAPOOL_EINVAL;
  if (lp->phase != LP_PHASE_RUNNING) return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  if (!luapool_has_function(lp, fn))
    return lp_engine_error(lp, LUAPOOL_ENOTASK, "no task function named '%s' in the script", fn);
  int id = lp_names_intern(&lp->names, fn, strlen(fn));
  lp_buf args;
  lp_buf_init(&args);
  int bad = id < 0 || lp_pack_begin(&args, (uint32_t)argc) != 0;
  for (int i = 0; i < argc && !bad; i++)
    bad = lp_pack_put_string(&args, argv[i], strlen(argv[i])) != 0;
  if (bad) {
    lp_buf_free(&args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  lp_task *t = lp_task_new(lp, NULL, id, 0, &args);
  if (!t) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  t->timeout = lp->cfg.task_timeout;
  t->retries = lp->cfg.retries;
  pthread_mutex_lock(&lp->host_lock);
  lp->live_roots++;
  pthread_mutex_unlock(&lp->host_lock);
  lp_report_root(&lp->report, t);
  if (lp->inline_mode)
    lp_sched_push(&lp->sched, 0, t);
  else
    lp_sched_inject(&lp->sched, t);
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int luapool_has_function(luapool *lp, const char *name) {
  if (!lp || !name || !lp->defined) return 0;
  return bsearch(&name, lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names) != NULL;
}

int luapool_functions(luapool *lp, const char *const **names) {
  if (!lp || !names) return LUAPOOL_EINVAL;
  *names = (const char *const *)lp->defined;
  return lp->ndefined;
}

void lp_engine_root_done(luapool *eng, lp_task *root) {
  if (eng->link) lp_procworker_root_done(eng, root);
  pthread_mutex_lock(&eng->host_lock);
  eng->live_roots--;
  if (eng->live_roots == 0) pthread_cond_broadcast(&eng->host_cond);
  pthread_mutex_unlock(&eng->host_lock);
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
  if (eng->cfg.fail_fast) luapool_cancel(eng);
}

_Atomic int64_t *lp_engine_counter(luapool *eng, int id) {
  int b = id / LP_COUNTER_BLOCK;
  pthread_mutex_lock(&eng->counters_lock);
  if (b >= eng->ncounter_blocks) {
    int nb = b + 1;
    _Atomic int64_t **blocks = realloc(eng->counters, sizeof *blocks * (size_t)nb);
    if (!blocks) {
      pthread_mutex_unlock(&eng->counters_lock);
      return NULL;
    }
    for (int i = eng->ncounter_blocks; i < nb; i++) blocks[i] = NULL;
    eng->counters = blocks;
    eng->ncounter_blocks = nb;
  }
  if (!eng->counters[b]) eng->counters[b] = calloc(LP_COUNTER_BLOCK, sizeof(_Atomic int64_t));
  _Atomic int64_t *slot = eng->counters[b] ? &eng->counters[b][id % LP_COUNTER_BLOCK] : NULL;
  pthread_mutex_unlock(&eng->counters_lock);
  return slot;
}

void luapool_cancel(luapool *lp) {
  if (!lp) return;
  atomic_store(&lp->stopping, 1);
  atomic_fetch_add(&lp->cancel_epoch, 1);
  lp_procs_cancel_all(lp);
  /* Parked workers must see it: they fire all their timers at once, so
   * sleepers resume and find themselves cancelled. */
  lp_sched_wake_all(&lp->sched);
}

void luapool_interrupt(luapool *lp) {
  if (lp) atomic_store(&lp->interrupted, 1);
}

int luapool_wait(luapool *lp, double timeout) {
  if (!lp) return LUAPOOL_EINVAL;
  if (lp->phase != LP_PHASE_RUNNING) return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  double deadline = timeout >= 0 ? lp_now() + timeout : -1;
  int rc = 0;
  if (lp->inline_mode) {
    rc = lp_pool_run_inline(lp);
    if (rc == LUAPOOL_EDEADLOCK)
      lp_engine_error(lp, rc, "deadlock: tasks wait for something that can never happen");
  } else {
    for (;;) {
      lp_report_deliver(&lp->report, 0);
      lp_stats_tick(lp);
      if (atomic_load(&lp->interrupted) && !atomic_load(&lp->stopping)) luapool_cancel(lp);
      pthread_mutex_lock(&lp->host_lock);
      long live = lp->live_roots;
      if (live > 0) {
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
      if (live == 0) break;
    }
  }
  lp_report_deliver(&lp->report, rc != LUAPOOL_ETIMEDOUT); /* the run is over */
  if (rc == 0 && atomic_load(&lp->interrupted)) rc = LUAPOOL_EINTERRUPTED;
  if (rc == 0 && atomic_load(&lp->unawaited_failures)) rc = LUAPOOL_ETASKFAIL;
  return rc;
}

void luapool_close(luapool *lp) {
  if (!lp) return;
  if (lp->phase == LP_PHASE_RUNNING) {
    pthread_mutex_lock(&lp->host_lock);
    long live = lp->live_roots;
    pthread_mutex_unlock(&lp->host_lock);
    if (live > 0) {
      luapool_cancel(lp);
      luapool_wait(lp, -1);
    }
  }
  lp->phase = LP_PHASE_CLOSING;
  lp_procs_stop(lp);
  lp_pool_stop(lp);
  lp_trace_close(lp); /* the workers are joined: their events can be read */
  lp_sync_free(lp);
  lp_report_free(&lp->report);
  lp_pool_free(lp);
  lp_sched_free(&lp->sched);
  lp_names_free(&lp->names);
  for (int i = 0; i < lp->ncounter_blocks; i++) free(lp->counters[i]);
  free(lp->counters);
  free(lp->script);
  free(lp->chunkname);
  for (int i = 0; i < lp->nmodules; i++) free(lp->modules[i].name);
  free(lp->modules);
  for (int i = 0; i < lp->ndefined; i++) free(lp->defined[i]);
  free(lp->defined);
  for (int i = 0; i < lp->npools; i++) free(lp->pools[i].name);
  free(lp->pools);
  pthread_mutex_destroy(&lp->host_lock);
  pthread_cond_destroy(&lp->host_cond);
  pthread_mutex_destroy(&lp->counters_lock);
  free(lp);
}

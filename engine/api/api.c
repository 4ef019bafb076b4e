/*
 * api.c - the public C API of luapool.h.
 *
 * The host thread submits roots, then waits in luapool_wait or
 * luapool_future_wait, which is also where records and failure reports are
 * delivered (report.c), so callbacks always run on the host's own thread.
 *
 * Open engines are kept in one list under open_lock, and every entry point
 * checks its handle against it, so a handle used after luapool_close is
 * refused rather than dereferenced. A future holds a reference on its root
 * task and sits in its engine's list of futures (host thread only); close
 * copies each one's outcome into it and drops the reference, so a future
 * outlives its engine safely.
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
#include "value.h"
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

/* Takes lp off the list; 1 if it was there. */
static int remove_open(luapool *lp) {
  pthread_mutex_lock(&open_lock);
  luapool **pp = &open_list;
  while (*pp && *pp != lp) pp = &(*pp)->next_open;
  int found = *pp != NULL;
  if (found) *pp = lp->next_open;
  pthread_mutex_unlock(&open_lock);
  return found;
}

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

const char *luapool_errmsg(luapool *lp) {
  if (!lp) return "no engine";
  if (!lp_engine_is_open(lp)) return "not an open luapool handle";
  return lp->errmsg ? lp->errmsg : "out of memory (the message was lost)";
}

static void destroy(luapool *lp);

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
    destroy(eng);
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

int luapool_add_pool(luapool *lp, const char *name, const char *spec) {
  if (!lp_engine_is_open(lp) || !name || !spec) return LUAPOOL_EINVAL;
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
  if (!lp_engine_is_open(lp) || !name || !open) return LUAPOOL_EINVAL;
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
  if (rc == 0) rc = lp_procs_start(lp);
  if (rc != 0) return rc;
  if (lp->ndefined > 1) qsort(lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names);
  lp->phase = LP_PHASE_RUNNING;
  return 0;
}

int luapool_load_string(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (!lp_engine_is_open(lp) || !chunk) return LUAPOOL_EINVAL;
  return load(lp, chunk, len, chunkname ? chunkname : "=script");
}

int luapool_load_file(luapool *lp, const char *path) {
  if (!lp_engine_is_open(lp) || !path) return LUAPOOL_EINVAL;
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

/* ---- futures ---- */

struct luapool_future {
  luapool *eng;  /* NULL once detached (the engine has closed) */
  lp_task *task; /* a reference, while attached */
  uint64_t id;
  struct luapool_future *prev, *next; /* the engine's list of live futures */
  int state;                          /* a detached future's outcome (LP_TASK_*) */
  lp_buf result;                      /* and its packed values or message */
  int cancelled;                      /* cancelled by luapool_future_cancel: result holds why */
  lp_buf text;                        /* luapool_future_text, made on first use (NUL-terminated) */
  int has_text;
};

/* A task's waiter that wakes the host when the task finishes. It belongs
 * to the task's waiter list until it fires, and frees itself then, so a
 * future may be freed at any moment without racing the finishing worker. */
static void fire_host(lp_waiter *w, lp_task *done) {
  luapool *eng = done->eng;
  pthread_mutex_lock(&eng->host_lock);
  pthread_cond_broadcast(&eng->host_cond);
  pthread_mutex_unlock(&eng->host_lock);
  free(w);
}

void luapool_task_opts_init(luapool_task_opts *opts) {
  if (!opts) return;
  opts->priority = 0;
  opts->timeout = -1;
  opts->retries = -1;
  opts->pool = NULL;
}

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

int lp_engine_submit(luapool *lp, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     luapool_future **out) {
  if (out) *out = NULL;
  if (lp->phase != LP_PHASE_RUNNING) {
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  }
  if (!luapool_has_function(lp, fn)) {
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
  luapool_future *f = out ? calloc(1, sizeof *f) : NULL;
  lp_waiter *wake = out ? malloc(sizeof *wake) : NULL;
  if (id < 0 || (out && (!f || !wake))) {
    free(f);
    free(wake);
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  lp_task *t = lp_task_new(lp, NULL, id, opts ? opts->priority : 0, args);
  if (!t) {
    free(f);
    free(wake);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  t->timeout = timeout;
  t->retries = retries;
  t->pool = pool;
  if (f) {
    lp_task_ref(t);
    f->eng = lp;
    f->task = t;
    f->id = t->id;
    lp_buf_init(&f->result);
    lp_buf_init(&f->text);
    f->next = lp->futures;
    if (f->next) f->next->prev = f;
    lp->futures = f;
    wake->fire = fire_host;
    lp_task_watch(t, wake); /* not yet queued: it cannot have finished */
    *out = f;
  }
  pthread_mutex_lock(&lp->host_lock);
  lp->live_roots++;
  pthread_mutex_unlock(&lp->host_lock);
  lp_report_root(&lp->report, t);
  if (lp->inline_mode) {
    lp_sched_push(&lp->sched, 0, t);
  } else if (pool != 0 && lp->pools[pool].procs) {
    /* Another pool's processes: the main pool's roots run on an engine
     * thread, a root sent elsewhere runs where its pool's tasks do. */
    if (lp_procs_push(lp, t) != 0) {
      atomic_store(&t->awaited, 1); /* the failed submit says it */
      lp_task_finish(t, LP_TASK_FAILED, NULL);
      if (f) luapool_future_free(f);
      if (out) *out = NULL;
      return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
    }
  } else {
    lp_sched_inject(&lp->sched, t);
  }
  return 0;
}

int luapool_submit(luapool *lp, const char *fn, int argc, const char *const *argv) {
  if (!lp_engine_is_open(lp) || !fn || argc < 0 || (argc > 0 && !argv)) return LUAPOOL_EINVAL;
  lp_buf args;
  lp_buf_init(&args);
  int bad = lp_pack_begin(&args, (uint32_t)argc) != 0;
  for (int i = 0; i < argc && !bad; i++)
    bad = lp_pack_put_string(&args, argv[i], strlen(argv[i])) != 0;
  if (bad) {
    lp_buf_free(&args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  return lp_engine_submit(lp, fn, &args, NULL, NULL);
}

int luapool_submit_values(luapool *lp, const char *fn, const luapool_values *args,
                          luapool_future **out) {
  return luapool_submit_opts(lp, fn, args, NULL, out);
}

int luapool_submit_opts(luapool *lp, const char *fn, const luapool_values *args,
                        const luapool_task_opts *opts, luapool_future **out) {
  if (out) *out = NULL;
  if (!lp_engine_is_open(lp) || !fn) return LUAPOOL_EINVAL;
  lp_buf msg;
  lp_buf_init(&msg);
  int rc = lp_value_message(args, &msg);
  if (rc != 0) {
    lp_buf_free(&msg);
    return rc == LUAPOOL_EINVAL
               ? lp_engine_error(lp, rc, "the arguments are incomplete: a table is not full")
               : lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  return lp_engine_submit(lp, fn, &msg, opts, out);
}

/* The outcome of a finished future: LP_TASK_* state and its packed bytes.
 * Returns 0 while the task has not finished. */
static int outcome(const luapool_future *f, const lp_buf **bytes) {
  if (f->cancelled) {
    *bytes = &f->result;
    return LP_TASK_CANCELLED;
  }
  if (f->task) {
    if (!lp_task_finished(f->task)) return 0;
    *bytes = &f->task->result;
    return atomic_load_explicit(&f->task->state, memory_order_acquire);
  }
  *bytes = &f->result;
  return f->state;
}

static void unlink_future(luapool_future *f) {
  if (f->prev)
    f->prev->next = f->next;
  else
    f->eng->futures = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
}

static void make_text(luapool_future *f);

/* The engine closes: f keeps a copy of its outcome and lets go of the task. */
static void detach(luapool_future *f) {
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (f->cancelled) {
    /* its outcome is already its own */
  } else if (state == 0) {
    static const char msg[] = "the engine closed before the task finished";
    state = LP_TASK_CANCELLED;
    lp_buf_reset(&f->result);
    if (lp_pack_begin(&f->result, 1) != 0 ||
        lp_pack_put_string(&f->result, msg, sizeof msg - 1) != 0)
      lp_buf_reset(&f->result);
  } else {
    make_text(f); /* the engine's formatting state goes with it */
    if (lp_buf_append(&f->result, bytes->data, bytes->len) != 0) lp_buf_reset(&f->result);
  }
  f->state = state;
  unlink_future(f);
  lp_task_unref(f->task);
  f->task = NULL;
  f->eng = NULL;
}

int luapool_future_done(const luapool_future *f) {
  const lp_buf *bytes;
  return f && outcome(f, &bytes) != 0;
}

uint64_t luapool_future_id(const luapool_future *f) { return f ? f->id : 0; }

int luapool_future_cancel(luapool_future *f) {
  if (!f || !f->task || f->cancelled || !lp_task_cancel(f->task)) return 0;
  /* Done now, as a cancelled future is: waiting for a suspended body to
   * unwind, or a queued one to be taken off its queue, would make the
   * caller wait on a task it has given up. */
  char text[320];
  int n = snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled",
                   lp_names_get(&f->eng->names, f->task->fn), (unsigned long long)f->id);
  lp_buf_reset(&f->result);
  if (lp_pack_begin(&f->result, 1) != 0 || lp_pack_put_string(&f->result, text, (size_t)n) != 0)
    lp_buf_reset(&f->result);
  f->has_text = 0;
  f->cancelled = 1;
  return 1;
}

static int wait_run(luapool *lp, double timeout, luapool_future *const *until, int nuntil);

int luapool_future_wait(luapool_future *f, double timeout) {
  if (!f) return LUAPOOL_EINVAL;
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (state == 0) {
    int rc = wait_run(f->eng, timeout, &f, 1);
    if (rc == LUAPOOL_EDEADLOCK) return rc;
    state = outcome(f, &bytes);
    if (state == 0) return rc == 0 || rc == LUAPOOL_ETASKFAIL ? LUAPOOL_EDEADLOCK : rc;
  }
  if (state == LP_TASK_OK) return 0;
  if (state == LP_TASK_CANCELLED) return LUAPOOL_ECANCELLED;
  if (f->task) atomic_store(&f->task->awaited, 1);
  return LUAPOOL_ETASKFAIL;
}

int luapool_future_result(luapool_future *f, const char **packed, size_t *len) {
  if (!f || !packed || !len) return LUAPOOL_EINVAL;
  const lp_buf *bytes;
  if (outcome(f, &bytes) != LP_TASK_OK) return LUAPOOL_ESTATE;
  *packed = bytes->data;
  *len = bytes->len;
  /* The message header: a version byte, then the count as a varint. */
  uint64_t n = 0;
  for (size_t i = 1, shift = 0; i < bytes->len && shift < 35; i++, shift += 7) {
    n |= (uint64_t)(bytes->data[i] & 0x7f) << shift;
    if (!(bytes->data[i] & 0x80)) break;
  }
  return (int)n;
}

static void make_text(luapool_future *f) {
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (f->has_text || state == 0) return;
  lp_buf_reset(&f->text);
  const char *s;
  size_t len;
  int rc;
  if (state == LP_TASK_OK && f->eng)
    rc = lp_report_text(&f->eng->report, bytes->data, bytes->len, &f->text);
  else if (lp_pack_single_string(bytes->data, bytes->len, &s, &len))
    rc = lp_buf_append(&f->text, s, len);
  else
    rc = lp_buf_append(&f->text, "task failed", 11);
  if (rc != 0 || lp_buf_append(&f->text, "", 1) != 0) {
    lp_buf_reset(&f->text);
    return;
  }
  f->text.len--; /* the NUL is not part of the text */
  f->has_text = 1;
}

const char *luapool_future_text(luapool_future *f, size_t *len) {
  if (!f) return NULL;
  make_text(f);
  if (!f->has_text) return NULL;
  if (len) *len = f->text.len;
  return f->text.data;
}

void luapool_future_free(luapool_future *f) {
  if (!f) return;
  if (f->task) {
    unlink_future(f);
    lp_task_unref(f->task);
  }
  lp_buf_free(&f->result);
  lp_buf_free(&f->text);
  free(f);
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int luapool_has_function(luapool *lp, const char *name) {
  if (!lp_engine_is_open(lp) || !name || !lp->defined) return 0;
  return bsearch(&name, lp->defined, (size_t)lp->ndefined, sizeof(char *), cmp_names) != NULL;
}

int luapool_functions(luapool *lp, const char *const **names) {
  if (!lp_engine_is_open(lp) || !names) return LUAPOOL_EINVAL;
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

static void cancel_run(luapool *lp);

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
  if (eng->cfg.fail_fast) cancel_run(eng); /* any thread: no handle check */
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

static void cancel_run(luapool *lp) {
  atomic_store(&lp->stopping, 1);
  atomic_fetch_add(&lp->cancel_epoch, 1);
  lp_procs_cancel_all(lp);
  lp_pool_stop_lua(lp); /* a task that never waits stops too */
  /* Parked workers must see it: they fire all their timers at once, so
   * sleepers resume and find themselves cancelled. */
  lp_sched_wake_all(&lp->sched);
}

void luapool_cancel(luapool *lp) {
  if (lp_engine_is_open(lp)) cancel_run(lp);
}

void luapool_interrupt(luapool *lp) {
  if (lp) atomic_store(&lp->interrupted, 1);
}

/* Whether one of the n futures is done. */
static int any_done(luapool_future *const *fs, int n) {
  for (int i = 0; i < n; i++)
    if (luapool_future_done(fs[i])) return 1;
  return 0;
}

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
  if (lp->link) return 0;
  if (!lp_procs_idle(lp) || !lp_sched_stalled(&lp->sched)) return 0;
  char list[2048];
  int n = lp_pool_describe_waits(lp, list, sizeof list);
  /* Processes first: a task they give back wakes its waiter before it
   * stops counting as held, so the look at the workers after sees it. */
  if (n == 0 || !lp_procs_idle(lp) || !lp_sched_stalled(&lp->sched)) return 0;
  lp_engine_error(lp, LUAPOOL_EDEADLOCK,
                  "deadlock: %d task%s wait%s for what no task can give any more:%s", n,
                  n == 1 ? "" : "s", n == 1 ? "s" : "", list);
  /* The waiting tasks are read while every worker still sleeps (cancel_run
   * wakes them all); they are woken after `stopping`, so they end. */
  atomic_store(&lp->stopping, 1);
  atomic_fetch_add(&lp->cancel_epoch, 1);
  lp_pool_wake_waits(lp);
  cancel_run(lp);
  return 1;
}

/* Runs the host's side of a run until every root has completed, or until
 * one of the futures `until[0 .. nuntil-1]` has finished (nuntil > 0), or
 * the timeout: delivers records and failure reports, turns an interrupt
 * into a cancel, and in inline mode runs the tasks themselves. */
static int wait_run(luapool *lp, double timeout, luapool_future *const *until, int nuntil) {
  if (lp->phase != LP_PHASE_RUNNING) return lp_engine_error(lp, LUAPOOL_ESTATE, "no script loaded");
  double deadline = timeout >= 0 ? lp_now() + timeout : -1;
  int rc = 0;
  long live = 0;
  if (lp->inline_mode) {
    rc = lp_pool_run_inline(lp);
    if (rc == LUAPOOL_EDEADLOCK)
      lp_engine_error(lp, rc, "deadlock: tasks wait for something that can never happen");
  } else {
    int stalls = 0, deadlock = 0;
    for (;;) {
      lp_report_deliver(&lp->report, 0);
      lp_stats_tick(lp);
      if (atomic_load(&lp->interrupted) && !atomic_load(&lp->stopping)) cancel_run(lp);
      /* Judged after a few looks in a row: a cheap guard on top of the
       * exact test in lp_sched_stalled. */
      if (timeout < 0 && !deadlock && !atomic_load(&lp->stopping) &&
          (lp_sched_stalled(&lp->sched) ? ++stalls : (stalls = 0)) >= 3)
        deadlock = deadlocked(lp);
      if (deadlock && rc == 0) rc = LUAPOOL_EDEADLOCK;
      pthread_mutex_lock(&lp->host_lock);
      live = lp->live_roots;
      int waiting = nuntil > 0 ? !any_done(until, nuntil) : live > 0;
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
  if (lp->inline_mode || nuntil > 0) {
    pthread_mutex_lock(&lp->host_lock);
    live = lp->live_roots;
    pthread_mutex_unlock(&lp->host_lock);
  }
  lp_report_deliver(&lp->report, rc != LUAPOOL_ETIMEDOUT && live == 0);
  if (rc == 0 && atomic_load(&lp->interrupted)) rc = LUAPOOL_EINTERRUPTED;
  if (rc == 0 && atomic_load(&lp->unawaited_failures)) rc = LUAPOOL_ETASKFAIL;
  return rc;
}

int luapool_wait(luapool *lp, double timeout) {
  if (!lp_engine_is_open(lp)) return LUAPOOL_EINVAL;
  return wait_run(lp, timeout, NULL, 0);
}

int lp_engine_wait_any(luapool *lp, luapool_future *const *fs, int n, double timeout) {
  if (!lp_engine_is_open(lp) || n < 1) return LUAPOOL_EINVAL;
  if (any_done(fs, n)) return 0;
  int rc = wait_run(lp, timeout, fs, n);
  return any_done(fs, n) ? 0 : rc == 0 || rc == LUAPOOL_ETASKFAIL ? LUAPOOL_EDEADLOCK : rc;
}

int luapool_close(luapool *lp) {
  if (!lp) return 0;
  if (!remove_open(lp)) return LUAPOOL_EINVAL;
  destroy(lp);
  return 0;
}

static void destroy(luapool *lp) {
  if (lp->phase == LP_PHASE_RUNNING) {
    pthread_mutex_lock(&lp->host_lock);
    long live = lp->live_roots;
    pthread_mutex_unlock(&lp->host_lock);
    if (live > 0) {
      cancel_run(lp);
      wait_run(lp, -1, NULL, 0);
    }
  }
  /* Before the report goes: a detached future keeps its text, and a failure
   * nobody awaited is still reported. */
  while (lp->futures) detach(lp->futures);
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
  free(lp->errmsg);
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

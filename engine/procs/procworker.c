/*
 * procworker.c - a worker process: runs the tasks the engine sends it.
 *
 * DESIGN. The process is a luapool engine of its own (T worker threads,
 * each with its Lua state and the script) whose roots are the tasks the
 * engine sends. Their subtasks run here, with the same scheduler, waits
 * and completion counting as in thread mode. The main thread is the link:
 * it reads EXEC frames into new roots and sends back, batched into one
 * write, what the engine must know of each root: STARTED when its body
 * begins (a crash before that loses nothing, the engine sends it again),
 * its RECORDs in the order the engine's report needs (tree order of the
 * subtree, or the order they were made), RESULT when its body ends, DONE
 * when its whole subtree has. It asks for more work with WANT, keeping a
 * window of runnable tasks (queued or running: a task that waits leaves
 * it, as it leaves its thread) that grows while its workers run dry, so
 * small tasks travel in large batches and long ones are not hoarded.
 *
 * Worker threads never write to the pipe. They hand roots over on three
 * stacks (begun, ended, subtree ended; one CAS each) and kick the link
 * awake only when it sleeps; the link alone frees and reuses an exec.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "engine.h"
#include "idmap.h"
#include "lib.h"
#include "pool.h"
#include "report.h"
#include "timer.h"
#include "proc.h"
#include "trace.h"
#include "wire.h"

typedef struct lp_exec {
  lp_waiter w; /* first: the body's end fires it */
  lp_task *t;
  uint64_t id;
  lp_cursor cur;
  int walked;                  /* the cursor has walked the whole subtree */
  int is_done;                 /* its subtree has ended */
  int sent_done;               /* DONE went out with its RESULT */
  int began;                   /* its body began (set before it went on `started`) */
  struct lp_exec *prev, *next; /* the active list, link-only */
  struct lp_exec *st_next;     /* the started stack */
  _Atomic int on_started;      /* on the started stack, not yet taken */
  struct lp_exec *fin_next;    /* the finished stack */
  struct lp_exec *done_next;   /* the done stack, then the late list */
} lp_exec;

/* A question to the engine that a task waits for (counters). */
typedef struct lp_request {
  struct lp_request *next;
  uint64_t id;
  lp_task *task;
  int64_t value;
  int done;      /* the answer is in */
  int abandoned; /* the task stopped waiting (cancelled, timed out) */
} lp_request;

typedef struct lp_link {
  lp_uplink up; /* first: the engine's uplink (place.h) */
  luapool *eng;
  int in_fd, out_fd, kick_fd;
  int threads;
  pthread_mutex_t lock; /* guards `out` and `requests` */
  lp_request *requests; /* waiting for their REPLY */
  uint64_t next_request;
  lp_buf out; /* frames from worker threads (failures) */
  /* Stacks the workers push on (one CAS each) and the link empties. */
  _Atomic(lp_exec *) started;  /* bodies begun: STARTED to send */
  _Atomic(lp_exec *) finished; /* bodies ended: RESULT to send */
  _Atomic(lp_exec *) done;     /* subtrees ended: DONE to send */
  _Atomic int sleeping;        /* the link waits in poll: kick it */
  _Atomic unsigned nfinished;  /* bodies ended, for batching wakes */
  _Atomic uint64_t begun;      /* bodies begun */
  /* Link-only. */
  lp_exec *active;
  lp_exec *spare; /* freed execs, for reuse */
  lp_exec *late;
  lp_task *inj_head, *inj_tail; /* tasks received, handed to the workers in one go */
  long ninj;
  double last_walk;
  lp_task_cache cache; /* subtrees done whose records are still being walked */
  lp_buf wbuf;         /* frames not yet written */
  size_t wpos;
  lp_buf rbuf;              /* bytes read, not yet a whole frame */
  uint64_t received, ended; /* tasks received, bodies ended */
  uint64_t never_begun;     /* bodies ended before they began (cancelled) */
  uint64_t asked;           /* tasks asked for with WANT */
  long target;              /* runnable tasks to keep here */
  double rate;              /* bodies begun per second, smoothed */
  double win_start;
  uint64_t win_begun;
  int stopping;
  lp_idmap exported;        /* tasks handed to the engine for another process */
  int made_all;             /* completion order: the last walk missed no record */
  luapool_worker_stats *ws; /* one per thread, for STATS */
  uint64_t stats_sent;      /* bodies ended at the last STATS */
  uint64_t subtrees;        /* tasks received whose subtrees have ended */
  double stats_at;          /* when it went */
  long test_pause;          /* µs between the link's takes (LUAPOOL_TEST_LINK_PAUSE, specs) */
} lp_link;

/* The link of the engine inside this process. */
static lp_link *link_of(luapool *eng) { return (lp_link *)eng->up; }

static void kick(lp_link *k) {
  if (atomic_exchange(&k->sleeping, 0)) {
    uint64_t one = 1;
    ssize_t rc = write(k->kick_fd, &one, sizeof one);
    (void)rc;
  }
}

/* ---- hooks called by the engine's threads ---- */

#define PUSH(stack, x, field)                                                                  \
  do {                                                                                         \
    lp_exec *head_ = atomic_load_explicit(&(stack), memory_order_relaxed);                     \
    do (x)->field = head_;                                                                     \
    while (!atomic_compare_exchange_weak_explicit(&(stack), &head_, (x), memory_order_release, \
                                                  memory_order_relaxed));                      \
  } while (0)

/* A root's body begins once: roots are made with no retries (the engine
 * runs its own tasks again, as new roots). */
static void up_root_started(lp_uplink *u, lp_task *t) {
  lp_link *k = (lp_link *)u;
  lp_exec *x = t->at_ref;
  if (!x) return;
  x->began = 1;
  atomic_store_explicit(&x->on_started, 1, memory_order_relaxed);
  PUSH(k->started, x, st_next);
  atomic_fetch_add_explicit(&k->begun, 1, memory_order_relaxed);
}

/* Ending tasks do not wake the link one by one: it looks every
 * millisecond, and a worker that runs out of work wakes it (idle). Only a
 * large batch waiting is worth a wake of its own. */
#define KICK_EVERY 64

static void exec_finished(lp_waiter *w, lp_task *t) {
  (void)t;
  lp_exec *x = (lp_exec *)w;
  lp_link *k = link_of(x->t->eng);
  PUSH(k->finished, x, fin_next);
  if (atomic_fetch_add_explicit(&k->nfinished, 1, memory_order_relaxed) % KICK_EVERY ==
      KICK_EVERY - 1)
    kick(k);
}

static void up_root_done(lp_uplink *u, lp_task *t) {
  lp_exec *x = t->at_ref;
  if (x) PUSH(((lp_link *)u)->done, x, done_next);
}

static void up_idle(lp_uplink *u) { kick((lp_link *)u); }

/* ---- counters: a round trip to the engine ---- */

static int counter_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_request *req = (lp_request *)ctx;
  lp_worker *w = lp_worker_of(L);
  lp_task *self = w->current;
  lp_link *k = link_of(w->eng);
  lp_lib_resumed(L, self);
  pthread_mutex_lock(&k->lock);
  int done = req->done;
  int64_t v = req->value;
  if (done)
    free(req);
  else
    req->abandoned = 1; /* the link frees it when the answer comes */
  pthread_mutex_unlock(&k->lock);
  if (!done) {
    lp_lib_check_cancelled(L, self);
    return luaL_error(L, "luapool.counter: no answer from the engine");
  }
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

static int up_counter(lp_uplink *u, lua_State *L, int name, int64_t delta, int add) {
  lp_task *self = lp_lib_waiting(L, add ? "counter:add" : "counter:get");
  lp_link *k = (lp_link *)u;
  lp_request *req = calloc(1, sizeof *req);
  if (!req) return luaL_error(L, "luapool.counter: out of memory");
  req->task = self;
  const char *nm = lp_names_get(&k->eng->names, name);
  lp_task_arm(self);
  size_t mark;
  pthread_mutex_lock(&k->lock);
  req->id = ++k->next_request;
  req->next = k->requests;
  k->requests = req;
  if (lp_wire_begin(&k->out, LP_MSG_COUNTER, &mark) == 0 && lp_wire_u64(&k->out, req->id) == 0 &&
      lp_wire_bytes(&k->out, nm, strlen(nm)) == 0 && lp_wire_u64(&k->out, (uint64_t)delta) == 0 &&
      lp_wire_u64(&k->out, (uint64_t)add) == 0)
    lp_wire_end(&k->out, mark);
  pthread_mutex_unlock(&k->lock);
  kick(k);
  return lp_lib_suspend(L, self, -1, (lua_KContext)req, counter_k);
}

static void on_reply(lp_link *k, uint64_t id, int64_t value) {
  pthread_mutex_lock(&k->lock);
  lp_request **pp = &k->requests;
  while (*pp && (*pp)->id != id) pp = &(*pp)->next;
  lp_request *req = *pp;
  if (req) *pp = req->next;
  lp_task *wake = NULL;
  if (req && req->abandoned) {
    free(req);
  } else if (req) {
    req->value = value;
    req->done = 1;
    wake = req->task;
  }
  pthread_mutex_unlock(&k->lock);
  if (wake) lp_task_wake(wake);
}

/* ---- frames out ---- */

static void put_result(lp_link *k, lp_exec *x, int done) {
  lp_task *t = x->t;
  size_t mark;
  const char *note = t->failnote ? t->failnote : "";
  if (lp_wire_begin(&k->wbuf, LP_MSG_RESULT, &mark) == 0 && lp_wire_u64(&k->wbuf, x->id) == 0 &&
      lp_wire_u64(&k->wbuf, (uint64_t)atomic_load(&t->state)) == 0 &&
      lp_wire_u64(&k->wbuf, (uint64_t)done) == 0 &&
      lp_wire_bytes(&k->wbuf, t->result.data, t->result.len) == 0 &&
      lp_wire_bytes(&k->wbuf, note, strlen(note)) == 0)
    lp_wire_end(&k->wbuf, mark);
}

static void put_record(lp_link *k, uint64_t id, const lp_record *rec) {
  size_t mark;
  const char *fn = rec->fn >= 0 ? lp_names_get(&k->eng->names, rec->fn) : "";
  if (lp_wire_begin(&k->wbuf, LP_MSG_RECORD, &mark) == 0 && lp_wire_u64(&k->wbuf, id) == 0 &&
      lp_wire_u64(&k->wbuf, (uint64_t)rec->kind) == 0 && lp_wire_u64(&k->wbuf, rec->task) == 0 &&
      lp_wire_bytes(&k->wbuf, fn, strlen(fn)) == 0 && lp_wire_f64(&k->wbuf, rec->priority) == 0 &&
      lp_wire_bytes(&k->wbuf, rec->data, rec->len) == 0)
    lp_wire_end(&k->wbuf, mark);
}

static void put_id(lp_link *k, int type, uint64_t v) {
  size_t mark;
  if (lp_wire_begin(&k->wbuf, type, &mark) == 0 && lp_wire_u64(&k->wbuf, v) == 0)
    lp_wire_end(&k->wbuf, mark);
}

typedef struct sub_sink {
  lp_link *k;
  uint64_t id;
} sub_sink;

static void sink_sub(void *ud, const lp_record *rec) {
  sub_sink *s = ud;
  put_record(s->k, s->id, rec);
}

static void sink_made(void *ud, const lp_record *rec) { put_record(ud, rec->root, rec); }

/* ---- frames in ---- */

static void exec_free(lp_link *k, lp_exec *x) {
  /* Reused while still on the started stack, the exec would link the stack
   * into a cycle: the order in which forward() takes the stacks rules it
   * out, and this says so loudly if that ever changes. */
  if (atomic_load_explicit(&x->on_started, memory_order_relaxed)) {
    fprintf(stderr, "luapool worker %d: internal error: task %llu freed on the started stack\n",
            (int)getpid(), (unsigned long long)x->id);
    abort();
  }
  if (x->prev)
    x->prev->next = x->next;
  else
    k->active = x->next;
  if (x->next) x->next->prev = x->prev;
  x->t->at_ref = NULL;
  lp_task_unref(x->t);
  x->next = k->spare;
  k->spare = x;
}

static int on_exec(lp_link *k, lp_wire_msg *m) {
  uint64_t id, depth;
  double prio, timeout;
  const char *fn, *args;
  size_t fnlen, argslen;
  if (lp_wire_get_u64(m, &id) || lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_u64(m, &depth) ||
      lp_wire_get_f64(m, &prio) || lp_wire_get_f64(m, &timeout) ||
      lp_wire_get_bytes(m, &args, &argslen))
    return -1;
  luapool *eng = k->eng;
  int fid = lp_names_intern(&eng->names, fn, fnlen);
  lp_buf b;
  lp_buf_init(&b);
  lp_exec *x = k->spare;
  if (x)
    k->spare = x->next;
  else
    x = malloc(sizeof *x);
  if (fid < 0 || !x || lp_buf_append(&b, args, argslen) != 0) {
    free(x);
    lp_buf_free(&b);
    return -1;
  }
  memset(x, 0, sizeof *x);
  lp_task *t = lp_task_new(eng, NULL, fid, prio, &b);
  if (!t) {
    free(x);
    return -1;
  }
  t->id = id;
  t->depth = depth > 1000000 ? 1000000 : (int)depth;
  t->timeout = timeout > 0 ? timeout : 0;
  atomic_store(&t->awaited, 1); /* the engine reports it if nobody waits */
  t->at_ref = x;
  x->t = t;
  x->id = id;
  x->w.fire = exec_finished;
  lp_task_ref(t); /* the exec's, until DONE has been sent */
  lp_task_watch(t, &x->w);
  lp_report_subroot(&eng->report, t, &x->cur);
  x->next = k->active;
  if (k->active) k->active->prev = x;
  k->active = x;
  if (!k->received++) lp_stats_start(eng); /* busy shares count from here */
  t->qnext = NULL;
  if (k->inj_tail)
    k->inj_tail->qnext = t;
  else
    k->inj_head = t;
  k->inj_tail = t;
  k->ninj++;
  return 0;
}

/* Hands the tasks received to the workers, in one go. */
static void hand_over(lp_link *k) {
  if (!k->ninj) return;
  luapool *eng = k->eng;
  pthread_mutex_lock(&eng->host_lock);
  eng->live_roots += k->ninj;
  pthread_mutex_unlock(&eng->host_lock);
  lp_sched_inject_list(&eng->sched, k->inj_head, k->inj_tail, k->ninj);
  k->inj_head = k->inj_tail = NULL;
  k->ninj = 0;
}

static void on_cancel(lp_link *k, uint64_t id) {
  for (lp_exec *x = k->active; x; x = x->next)
    if (x->id == id) lp_task_cancel(x->t);
}

/* ---- tasks run by other processes ---- */

/* HUNGRY: another process is idle. Up to n tasks that wait here and have
 * not begun go to the engine (EXPORT) to run there. Each stays in its tree
 * as a proxy: the RESULT, RECORD and DONE frames the engine relays back
 * finish it, as the engine itself finishes the tasks it sends. */
static void on_hungry(lp_link *k, uint64_t n) {
  luapool *eng = k->eng;
  lp_task *out[64];
  int got = k->stopping ? 0 : lp_sched_export(&eng->sched, out, n < 64 ? (int)n : 64);
  for (int i = 0; i < got; i++) {
    lp_task *t = out[i];
    const char *fn = lp_names_get(&eng->names, t->fn);
    size_t mark, len = k->wbuf.len;
    /* A task the engine sent stays: the engine has its own queue for those. */
    if (!t->parent || atomic_load(&t->state) != LP_TASK_QUEUED ||
        lp_idmap_put(&k->exported, t) != 0) {
      lp_sched_inject(&eng->sched, t); /* it runs here after all */
      continue;
    }
    if (lp_wire_begin(&k->wbuf, LP_MSG_EXPORT, &mark) || lp_wire_u64(&k->wbuf, t->id) ||
        lp_wire_bytes(&k->wbuf, fn, strlen(fn)) || lp_wire_u64(&k->wbuf, (uint64_t)t->depth) ||
        lp_wire_f64(&k->wbuf, t->priority) || lp_wire_f64(&k->wbuf, t->timeout) ||
        lp_wire_u64(&k->wbuf, (uint64_t)(t->retries > 0 ? t->retries : 0)) ||
        lp_wire_bytes(&k->wbuf, t->args.data, t->args.len)) {
      k->wbuf.len = len;
      lp_idmap_take(&k->exported, t->id);
      lp_sched_inject(&eng->sched, t);
      continue;
    }
    lp_wire_end(&k->wbuf, mark);
    t->retries = 0;        /* the engine runs it again if it fails there */
    lp_task_ref(t);        /* the link's, until DONE */
    lp_task_away_begin(t); /* its subtree there counts here until DONE */
  }
}

static void up_cancel(lp_uplink *u, lp_task *t) {
  lp_link *k = (lp_link *)u;
  size_t mark;
  pthread_mutex_lock(&k->lock);
  if (lp_wire_begin(&k->out, LP_MSG_CANCEL, &mark) == 0 && lp_wire_u64(&k->out, t->id) == 0)
    lp_wire_end(&k->out, mark);
  pthread_mutex_unlock(&k->lock);
  kick(k);
}

static void relayed_done(lp_link *k, lp_task *t) {
  lp_task_away_done(t, 0);
  lp_task_unref(t);
}

static int on_relayed(lp_link *k, lp_wire_msg *m) {
  luapool *eng = k->eng;
  uint64_t id, state, done, kind, task;
  const char *res, *note, *fn;
  size_t len, notelen, fnlen;
  double prio;
  lp_task *t;
  switch (m->type) {
    case LP_MSG_RESULT:
      if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &state) || lp_wire_get_u64(m, &done) ||
          lp_wire_get_bytes(m, &res, &len) || lp_wire_get_bytes(m, &note, &notelen) ||
          state < LP_TASK_OK || state > LP_TASK_CANCELLED)
        return -1;
      t = done ? lp_idmap_take(&k->exported, id) : lp_idmap_get(&k->exported, id);
      if (!t) return 0;
      if (!lp_task_finished(t))
        lp_task_finish_away(t, (lp_task_state)state, res, len, note, notelen);
      if (done) relayed_done(k, t);
      return 0;
    case LP_MSG_RECORD: {
      if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &kind) || lp_wire_get_u64(m, &task) ||
          lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_f64(m, &prio) ||
          lp_wire_get_bytes(m, &res, &len) || kind > LUAPOOL_RECORD_PRINT)
        return -1;
      if (!(t = lp_idmap_get(&k->exported, id))) return 0;
      /* Made for t, the proxy: the record takes the id of the task sent
       * here that t descends from, which completion order sends it under. */
      lp_record *rec = lp_record_new((int)kind, t, prio, res, len);
      if (!rec) return 0;
      rec->task = task;
      rec->fn = lp_names_intern(&eng->names, fn, fnlen);
      lp_report_add(&eng->report, t, rec);
      return 0;
    }
    case LP_MSG_DONE:
      if (lp_wire_get_u64(m, &id)) return -1;
      if ((t = lp_idmap_take(&k->exported, id))) relayed_done(k, t);
      return 0;
    default: return -1;
  }
}

/* Handles every whole frame in rbuf. -1: a malformed frame. */
static int read_frames(lp_link *k) {
  size_t off = 0;
  for (;;) {
    lp_wire_msg m;
    long n = lp_wire_frame(k->rbuf.data + off, k->rbuf.len - off, &m);
    if (n == 0) break;
    if (n < 0) return -1;
    off += (size_t)n;
    uint64_t v;
    switch (m.type) {
      case LP_MSG_EXEC:
        if (on_exec(k, &m) != 0) return -1;
        break;
      case LP_MSG_CANCEL:
        if (lp_wire_get_u64(&m, &v) != 0) return -1;
        on_cancel(k, v);
        break;
      case LP_MSG_STOP:
        k->stopping = 1;
        luapool_cancel(k->eng);
        break;
      case LP_MSG_REPLY: {
        uint64_t value;
        if (lp_wire_get_u64(&m, &v) != 0 || lp_wire_get_u64(&m, &value) != 0) return -1;
        on_reply(k, v, (int64_t)value);
        break;
      }
      case LP_MSG_HUNGRY:
        if (lp_wire_get_u64(&m, &v) != 0) return -1;
        on_hungry(k, v);
        break;
      case LP_MSG_RESULT:
      case LP_MSG_RECORD:
      case LP_MSG_DONE:
        if (on_relayed(k, &m) != 0) return -1;
        break;
      default: return -1;
    }
  }
  memmove(k->rbuf.data, k->rbuf.data + off, k->rbuf.len - off);
  k->rbuf.len -= off;
  hand_over(k);
  return 0;
}

/* ---- the link's loop ---- */

static lp_exec *take_stack(_Atomic(lp_exec *) *stack) {
  return atomic_exchange_explicit(stack, NULL, memory_order_acquire);
}

static void walk(lp_link *k, lp_exec *x) {
  sub_sink s = {k, x->id};
  if (k->eng->report.order == LUAPOOL_ORDER_COMPLETION)
    x->walked = x->walked || k->made_all;
  else if (!x->walked)
    x->walked = lp_report_walk_sub(&k->eng->report, &x->cur, sink_sub, &s);
}

/* What this process has counted, for the engine's --stats and progress
 * bar. The tasks sent here are the engine's own: what counts is what their
 * subtrees made. `ended` counts the roots whose bodies have ended, those
 * about to be reported included: STATS goes out before their RESULT and
 * DONE frames, so once the engine has every DONE its figures are exact. */
static void put_stats(lp_link *k, uint64_t ended) {
  luapool *eng = k->eng;
  uint64_t made = 0, fin = atomic_load_explicit(&k->cache.finished, memory_order_relaxed);
  long running = 0;
  /* Finished first: a task counted finished is counted made too. */
  for (int i = 0; i < eng->nworkers; i++) {
    fin += atomic_load_explicit(&eng->workers[i].cache.finished, memory_order_relaxed);
    running += atomic_load_explicit(&eng->workers[i].stats.executing, memory_order_relaxed);
  }
  for (int i = 0; i < eng->nworkers; i++)
    made += atomic_load_explicit(&eng->workers[i].cache.created, memory_order_relaxed);
  fin = fin > ended ? fin - ended : 0;
  luapool_stats st;
  luapool_get_stats(eng, &st);
  int n = luapool_get_worker_stats(eng, k->ws, k->threads);
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  size_t mark;
  lp_buf *b = &k->wbuf;
  if (lp_wire_begin(b, LP_MSG_STATS, &mark) || lp_wire_u64(b, made) ||
      lp_wire_u64(b, fin < made ? fin : made) ||
      lp_wire_u64(b, (uint64_t)lp_sched_queued(&eng->sched)) || lp_wire_u64(b, (uint64_t)running) ||
      lp_wire_u64(b, st.tasks_run) || lp_wire_u64(b, st.tasks_failed) ||
      lp_wire_u64(b, st.tasks_retried) || lp_wire_u64(b, (uint64_t)st.max_depth) ||
      lp_wire_f64(b, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9) ||
      lp_wire_u64(b, (uint64_t)(n > 0 ? n : 0)))
    return;
  for (int i = 0; i < n; i++)
    if (lp_wire_u64(b, k->ws[i].tasks_run) || lp_wire_f64(b, k->ws[i].busy)) return;
  lp_wire_end(b, mark);
  k->stats_sent = ended;
  k->stats_at = lp_now();
}

static void up_trace(lp_uplink *u, int thread, const lp_trace_ev *e, const char *fn) {
  lp_link *k = (lp_link *)u;
  lp_buf *b = &k->wbuf;
  size_t mark;
  if (lp_wire_begin(b, LP_MSG_TRACE, &mark) || lp_wire_u64(b, (uint64_t)thread) ||
      lp_wire_u64(b, (uint64_t)e->kind) || lp_wire_u64(b, e->ts) || lp_wire_u64(b, e->end) ||
      lp_wire_u64(b, e->task) || lp_wire_u64(b, e->other) || lp_wire_u64(b, (uint64_t)e->depth) ||
      lp_wire_bytes(b, fn, strlen(fn)))
    return;
  lp_wire_end(b, mark);
  if (b->len - k->wpos >= (1u << 20)) { /* the pipe blocks now: out it goes */
    lp_wire_write_all(k->out_fd, b->data + k->wpos, b->len - k->wpos);
    lp_buf_reset(b);
    k->wpos = 0;
  }
}

/* Sends what the workers handed over: records first, so the engine has a
 * task's records before it learns that the task ended. A task whose
 * subtree ended with its body gets one frame for both. */
static void forward(lp_link *k) {
  luapool *eng = k->eng;
  /* A root goes on the started stack as its body begins, on the finished
   * one as it ends, on the done one after that; an exec on the done stack
   * is freed below. So the stacks are taken in the reverse order: each take
   * holds every push that came before the pushes the previous took, and an
   * exec is never freed (and reused) while it is still on a stack. */
  lp_exec *done = take_stack(&k->done);
  if (k->test_pause) usleep((useconds_t)k->test_pause);
  lp_exec *fin = take_stack(&k->finished);
  lp_exec *st = take_stack(&k->started);
  pthread_mutex_lock(&k->lock);
  if (k->out.len) lp_buf_append(&k->wbuf, k->out.data, k->out.len);
  lp_buf_reset(&k->out);
  pthread_mutex_unlock(&k->lock);
  for (; st; st = st->st_next) {
    atomic_store_explicit(&st->on_started, 0, memory_order_relaxed);
    put_id(k, LP_MSG_STARTED, st->id);
  }
  uint64_t ended = k->ended;
  for (lp_exec *x = fin; x; x = x->fin_next) ended++;
  for (lp_exec *x = done; x; x = x->done_next) k->subtrees++;
  /* At most every millisecond as tasks end, and every 10 ms while they run
   * (the engine asks busy processes to share their queued tasks by these
   * figures); always when the last task here has ended, before its DONE:
   * the engine's final figures are exact. */
  double now = lp_now();
  int idle = k->subtrees == k->received;
  int changed = ended != k->stats_sent || done;
  if ((changed && (idle || now - k->stats_at >= 0.001)) || (!idle && now - k->stats_at >= 0.01))
    put_stats(k, ended);
  for (lp_exec *x = done; x; x = x->done_next) x->is_done = 1;
  if (eng->report.order == LUAPOOL_ORDER_COMPLETION) {
    /* A subtree that has ended made its records before: once the walk has
     * every record made so far, it has all of them. Not before: a worker
     * stalled in the middle of adding a record hides the ones after it,
     * and a DONE sent now would have the engine drop them when they come. */
    k->made_all = lp_report_walk_made(&eng->report, sink_made, k);
    for (lp_exec *x = done; x; x = x->done_next) walk(k, x);
  } else {
    /* Every active subtree now and then (streaming); the ended ones now. */
    if (now - k->last_walk > 0.001) {
      k->last_walk = now;
      for (lp_exec *x = k->active; x; x = x->next) walk(k, x);
    }
    for (lp_exec *x = fin; x; x = x->fin_next) walk(k, x);
    for (lp_exec *x = done; x; x = x->done_next) walk(k, x);
  }
  lp_report_flush_nodes(&eng->report);
  for (; fin; fin = fin->fin_next) {
    fin->sent_done = fin->is_done && fin->walked;
    put_result(k, fin, fin->sent_done);
    k->ended++;
    if (!fin->began) k->never_begun++;
  }
  while (done) {
    lp_exec *x = done;
    done = x->done_next;
    if (x->sent_done) {
      exec_free(k, x);
      continue;
    }
    x->done_next = k->late;
    k->late = x;
  }
  lp_exec **pp = &k->late;
  while (*pp) {
    lp_exec *x = *pp;
    walk(k, x); /* every record is known now; the walk ends at once */
    if (!x->walked) {
      pp = &x->done_next;
      continue;
    }
    *pp = x->done_next;
    put_id(k, LP_MSG_DONE, x->id);
    exec_free(k, x);
  }
}

/* Asks for more work when the window has room for a good batch. The
 * window counts runnable work only: tasks queued here (the roots not yet
 * begun and what they spawned) and tasks running on a thread. A task that
 * waits (a sleep, a get, a channel) leaves the window, as it leaves its
 * worker thread, so the process takes more work meanwhile; what it holds
 * in all, waiting tasks included, stays under HELD_MAX. The window holds
 * about WINDOW seconds of work at the rate bodies begin here, never less
 * than one task per thread: short tasks come in large batches, long ones
 * are not hoarded while another process could run them. */
#define WINDOW 0.002
#define HELD_MAX 65536 /* roots whose subtrees have not ended, per process */
static void want(lp_link *k) {
  luapool *eng = k->eng;
  double now = lp_now();
  uint64_t begun = atomic_load_explicit(&k->begun, memory_order_relaxed);
  if (now - k->win_start >= 0.02) {
    double rate = (double)(begun - k->win_begun) / (now - k->win_start);
    k->rate = k->rate > 0 ? 0.5 * k->rate + 0.5 * rate : rate;
    k->win_start = now;
    k->win_begun = begun;
    long t = (long)(k->rate * WINDOW);
    k->target = t < k->threads ? k->threads : t > 1024 ? 1024 : t;
  }
  if (k->stopping) return;
  long credit = (long)(k->asked - k->received);
  /* Roots not begun count from their arrival: a root a thread has taken
   * from its queue but not yet begun is neither queued nor running. */
  long queued = lp_sched_queued(&eng->sched),
       unbegun = (long)(k->received - begun - k->never_begun);
  long runnable = queued > unbegun ? queued : unbegun;
  for (int i = 0; i < eng->nworkers; i++)
    runnable += atomic_load_explicit(&eng->workers[i].stats.executing, memory_order_relaxed);
  long held = (long)(k->received - k->subtrees);
  long n = k->target - runnable - credit;
  if (n > HELD_MAX - held - credit) n = HELD_MAX - held - credit;
  long batch = k->target / 4 > 0 ? k->target / 4 : 1;
  if (n < batch) return;
  put_id(k, LP_MSG_WANT, (uint64_t)n);
  k->asked += (uint64_t)n;
}

/* Writes what it can without blocking. -1: the engine is gone. */
static int flush_some(lp_link *k) {
  while (k->wpos < k->wbuf.len) {
    ssize_t n = write(k->out_fd, k->wbuf.data + k->wpos, k->wbuf.len - k->wpos);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      return -1;
    }
    k->wpos += (size_t)n;
  }
  lp_buf_reset(&k->wbuf);
  k->wpos = 0;
  return 0;
}

/* Reads what is there. 1: data, 0: nothing, -1: end of input or error. */
static int read_some(lp_link *k) {
  int got = 0;
  for (;;) {
    if (lp_buf_reserve(&k->rbuf, 65536) != 0) return -1;
    ssize_t n = read(k->in_fd, k->rbuf.data + k->rbuf.len, 65536);
    if (n > 0) {
      k->rbuf.len += (size_t)n;
      got = 1;
      if (n < 65536) return got;
      continue;
    }
    if (n == 0) return -1;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return got;
    return -1;
  }
}

static int loop(lp_link *k) {
  for (;;) {
    int r = read_some(k);
    if (r < 0) return 0; /* the engine closed the pipe: the run is over */
    if (r > 0 && read_frames(k) != 0) {
      fprintf(stderr, "luapool worker %d: malformed message from the engine\n", (int)getpid());
      return 3;
    }
    forward(k);
    want(k);
    if (flush_some(k) != 0) return 0;
    struct pollfd p[3] = {{k->in_fd, POLLIN, 0}, {k->kick_fd, POLLIN, 0}, {k->out_fd, 0, 0}};
    if (k->wpos < k->wbuf.len) p[2].events = POLLOUT;
    atomic_store(&k->sleeping, 1);
    /* Frames the workers queued before we said we sleep would wait for
     * the timeout: look once more. */
    pthread_mutex_lock(&k->lock);
    int pending = atomic_load(&k->finished) || atomic_load(&k->done) || k->out.len;
    pthread_mutex_unlock(&k->lock);
    if (!pending) poll(p, p[2].events ? 3 : 2, k->active ? 1 : 100);
    atomic_store(&k->sleeping, 0);
    if (p[1].revents & POLLIN) {
      uint64_t v;
      ssize_t rc = read(k->kick_fd, &v, sizeof v);
      (void)rc;
    }
  }
}

/* ---- start-up ---- */

static int read_frame_blocking(int fd, lp_buf *b, lp_wire_msg *m) {
  for (;;) {
    long n = lp_wire_frame(b->data, b->len, m);
    if (n > 0) return 0;
    if (n < 0) return -1;
    if (lp_buf_reserve(b, 65536) != 0) return -1;
    ssize_t r = read(fd, b->data + b->len, 65536);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return -1;
    }
    b->len += (size_t)r;
  }
}

static void send_now(int fd, int type, const char *text) {
  lp_buf b;
  lp_buf_init(&b);
  size_t mark;
  if (lp_wire_begin(&b, type, &mark) == 0 &&
      (!text || lp_wire_bytes(&b, text, strlen(text)) == 0)) {
    lp_wire_end(&b, mark);
    lp_wire_write_all(fd, b.data, b.len);
  }
  lp_buf_free(&b);
}

static void on_failure(void *ud, const char *text) {
  lp_link *k = ud;
  size_t mark;
  pthread_mutex_lock(&k->lock);
  if (lp_wire_begin(&k->out, LP_MSG_FAILURE, &mark) == 0 &&
      lp_wire_bytes(&k->out, text, strlen(text)) == 0)
    lp_wire_end(&k->out, mark);
  pthread_mutex_unlock(&k->lock);
}

/* The way out before the loop runs: everything freed, for leak checkers. */
static int leave(lp_link *k, luapool *eng, int code) {
  if (eng) luapool_close(eng);
  lp_buf_free(&k->out);
  lp_buf_free(&k->wbuf);
  lp_buf_free(&k->rbuf);
  free(k->ws);
  free(k->exported.slot);
  lp_task_cache_self = NULL;
  lp_task_cache_drain(&k->cache);
  pthread_mutex_destroy(&k->lock);
  return code;
}

static const lp_uplink_ops link_ops = {
    .root_started = up_root_started,
    .root_done = up_root_done,
    .idle = up_idle,
    .counter = up_counter,
    .cancel = up_cancel,
    .trace = up_trace,
};

int lp_procworker_main(int in_fd, int out_fd) {
  /* No worker outlives the engine, even one killed without a word. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Programs a task starts (os.execute, io.popen) must not hold the socket:
   * the engine would not see this process's end while they live. */
  fcntl(in_fd, F_SETFD, FD_CLOEXEC);
  if (out_fd != in_fd) fcntl(out_fd, F_SETFD, FD_CLOEXEC);
  if (getppid() == 1) return 1;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* the engine decides what an interrupt means */
  lp_link k;
  memset(&k, 0, sizeof k);
  k.in_fd = in_fd;
  k.out_fd = out_fd;
  pthread_mutex_init(&k.lock, NULL);
  lp_buf_init(&k.out);
  lp_buf_init(&k.wbuf);
  lp_buf_init(&k.rbuf);
  lp_task_cache_init(&k.cache);
  lp_wire_msg m;
  uint64_t slot, threads, order, memlimit, idbase, trace, retries;
  double timeout;
  const char *name, *script, *pool;
  size_t namelen, scriptlen, poollen;
  if (read_frame_blocking(in_fd, &k.rbuf, &m) != 0 || m.type != LP_MSG_INIT ||
      lp_wire_get_u64(&m, &slot) || lp_wire_get_u64(&m, &threads) || lp_wire_get_u64(&m, &order) ||
      lp_wire_get_u64(&m, &memlimit) || lp_wire_get_u64(&m, &idbase) ||
      lp_wire_get_f64(&m, &timeout) || lp_wire_get_bytes(&m, &name, &namelen) ||
      lp_wire_get_bytes(&m, &script, &scriptlen) || lp_wire_get_bytes(&m, &pool, &poollen) ||
      lp_wire_get_u64(&m, &trace) || lp_wire_get_u64(&m, &retries) || threads < 1 ||
      threads > 4096 || retries > 1000000) {
    fprintf(stderr, "luapool worker: no valid start message on its pipe\n");
    return leave(&k, NULL, 2);
  }
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = (int)threads;
  cfg.order = order == LUAPOOL_ORDER_COMPLETION ? LUAPOOL_ORDER_COMPLETION : LUAPOOL_ORDER_TREE;
  cfg.memory_limit = (size_t)memlimit;
  cfg.task_timeout = timeout;
  cfg.retries = (int)retries; /* for the subtasks made here: the engine retries its own */
  cfg.on_failure = on_failure;
  cfg.ud = &k;
  /* No file here: at close the events go to the engine (its uplink's trace). */
  if (trace) cfg.trace_path = "(the engine's)";
  luapool *eng;
  if (luapool_open(&cfg, &eng) != 0) return leave(&k, NULL, 2);
  k.eng = eng;
  k.up.ops = &link_ops;
  k.up.where = "a worker process";
  k.up.keeps_exit = 1; /* os.exit ends this process, which the engine replaces */
  eng->up = &k.up;
  char *pname = strndup(pool, poollen); /* self().pool, and the pool its spawns go to */
  if (!pname) return leave(&k, eng, 2);
  free(eng->pools[0].name);
  eng->pools[0].name = pname;
  atomic_store(&eng->next_id, idbase);
  k.threads = (int)threads;
  k.ws = calloc(threads, sizeof *k.ws);
  if (!k.ws) return leave(&k, eng, 2);
  lp_task_cache_self = &k.cache;
  k.target = (long)threads;
  /* Specs widen the window between the link's takes of its stacks. */
  const char *pause = getenv("LUAPOOL_TEST_LINK_PAUSE");
  k.test_pause = pause ? strtol(pause, NULL, 10) : 0;
  k.win_start = lp_now();
  char *chunkname = strndup(name, namelen);
  int rc = chunkname ? luapool_load_string(eng, script, scriptlen, chunkname) : LUAPOOL_ENOMEM;
  free(chunkname);
  if (rc != 0) {
    send_now(out_fd, LP_MSG_LOADERR, luapool_errmsg(eng));
    return leave(&k, eng, 2);
  }
  /* The rest of the first read may hold frames already. */
  size_t first = (size_t)(m.end - (const unsigned char *)k.rbuf.data);
  memmove(k.rbuf.data, k.rbuf.data + first, k.rbuf.len - first);
  k.rbuf.len -= first;
  k.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (k.kick_fd < 0) return leave(&k, eng, 2);
  fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
  fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) | O_NONBLOCK);
  /* READY carries the first request for work: every process is asking
   * from the moment the engine hears it exists. */
  put_id(&k, LP_MSG_READY, (uint64_t)k.target);
  k.asked = (uint64_t)k.target;
  if (read_frames(&k) != 0) _exit(3);
  rc = loop(&k);
  if (rc == 0 && !k.active) {
    /* The run is over. Closing the engine collects the futures the worker
     * states still hold: a failure nobody awaited is known only then (as
     * at luapool_close in thread mode), and the engine still listens. The
     * trace's events go too. */
    fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) & ~O_NONBLOCK);
    /* The process is about to exit: freeing the states' memory need not
     * hand it back to the system page by page (an madvise per free). */
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
    luapool_close(eng);
    pthread_mutex_lock(&k.lock);
    lp_buf_append(&k.wbuf, k.out.data, k.out.len);
    pthread_mutex_unlock(&k.lock);
    lp_wire_write_all(out_fd, k.wbuf.data + k.wpos, k.wbuf.len - k.wpos);
  }
  /* Otherwise the engine is gone or the run was stopped: leave without
   * waiting for tasks that nobody will hear from. */
  _exit(rc);
}

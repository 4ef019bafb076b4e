/*
 * link_up.c - a worker process's side of the seam (core/place.h): the
 * uplink the engine here calls (a root began, a root's subtree ended, a
 * worker is idle, a counter's round trip, a task handed upstream is
 * cancelled, the trace at close), with the hook that sees a root's body
 * end, and the frames the link sends up (STARTED, RECORD, RESULT, DONE,
 * STATS: forward).
 *
 * The hooks run on the worker threads: they push an exec on one of the
 * link's stacks (one CAS) or append a frame to `out` under the link's lock,
 * and kick the link when it sleeps. The rest runs on the link (the main
 * thread; the trace too, at close), which alone writes wbuf and frees and
 * reuses execs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "lib.h"
#include "link.h"
#include "pool.h"
#include "timer.h"
#include "trace.h"

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

void lp_link_exec_finished(lp_waiter *w, lp_task *t) {
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

static void up_cancel(lp_uplink *u, lp_task *t) {
  lp_link *k = (lp_link *)u;
  size_t mark;
  pthread_mutex_lock(&k->lock);
  if (lp_wire_begin(&k->out, LP_MSG_CANCEL, &mark) == 0 && lp_wire_u64(&k->out, t->id) == 0)
    lp_wire_end(&k->out, mark);
  pthread_mutex_unlock(&k->lock);
  kick(k);
}

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

void lp_link_reply(lp_link *k, uint64_t id, int64_t value) {
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

void lp_link_put_id(lp_link *k, int type, uint64_t v) {
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

/* ---- the stacks, taken ---- */

static lp_exec *take_stack(_Atomic(lp_exec *) *stack) {
  return atomic_exchange_explicit(stack, NULL, memory_order_acquire);
}

/* Past this many bytes not yet written to the engine, records stay in the
 * report: there they count against the bound (--hold), which holds this
 * process's tasks back, instead of piling up in wbuf. */
#define LINK_BACKLOG (1 << 20)

static int backlogged(const lp_link *k) { return k->wbuf.len - k->wpos > LINK_BACKLOG; }

static void walk(lp_link *k, lp_exec *x) {
  if (backlogged(k)) return; /* not walked yet: its DONE waits (k->late) */
  sub_sink s = {k, x->id};
  if (k->eng->report.order == LUAPOOL_ORDER_COMPLETION)
    x->walked = x->walked || k->made_all;
  else if (!x->walked)
    x->walked = lp_report_walk_sub(&k->eng->report, &x->cur, sink_sub, &s);
}

static void exec_free(lp_link *k, lp_exec *x) {
  /* Reused while still on the started stack, the exec would link the stack
   * into a cycle: the order in which lp_link_forward() takes the stacks rules it
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

/* Sends what the workers handed over: records first, so the engine has a
 * task's records before it learns that the task ended. A task whose
 * subtree ended with its body gets one frame for both. */
void lp_link_forward(lp_link *k) {
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
    lp_link_put_id(k, LP_MSG_STARTED, st->id);
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
    k->made_all = !backlogged(k) && lp_report_walk_made(&eng->report, sink_made, k);
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
  if (!backlogged(k)) lp_report_pass_end(&eng->report);
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
    lp_link_put_id(k, LP_MSG_DONE, x->id);
    exec_free(k, x);
  }
}

const lp_uplink_ops lp_link_ops = {
    .root_started = up_root_started,
    .root_done = up_root_done,
    .idle = up_idle,
    .counter = up_counter,
    .cancel = up_cancel,
    .trace = up_trace,
};

/*
 * procs.c - worker processes as the place (core/place.h) of the pools that
 * have them: the table the core calls (take a task, cancel one, cancel the
 * run, idle, figures, start and stop), and the queues where tasks wait
 * until a feeder sends them.
 *
 * The engine's threads call push, cancel, cancel_all, idle and the figures
 * at any time; start and stop run on the thread that opens and closes the
 * engine (start waits until every process has loaded the script, stop
 * ends the processes and joins their threads). The queues and the
 * connections' state are under the pool's lock; a task that will not be
 * sent is finished (cancel_unsent) once the lock is released.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"
#include "proc.h"
#include "procs.h"
#include "value.h"

/* A task that will not be sent: cancelled when the run stops, failed when
 * its pool has no process left. */
static void cancel_unsent(luapool *eng, lp_task *t) {
  lp_procs *ps = procs_of(eng, t->pool);
  const char *name = lp_names_get(&eng->names, t->fn);
  char text[1024];
  /* Read now: once finished, a task of the engine's own may be freed. */
  int relayed = t->foreign;
  if (ps->lost[0] && !lp_task_cancelled(t)) {
    if (!t->failnote) t->failnote = lp_value_summary(t->args.data, t->args.len);
    atomic_fetch_add(&ps->failed, 1);
    snprintf(text, sizeof text, "task '%s' (id %llu) failed: %s", name, (unsigned long long)t->id,
             ps->lost);
    lp_relay_finish_with(t, LP_TASK_FAILED, text);
    if (relayed) lp_relay_done(t, 0);
    atomic_fetch_sub(&ps->held, 1);
    return;
  }
  snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled", name, (unsigned long long)t->id);
  lp_relay_finish_with(t, LP_TASK_CANCELLED, text);
  if (relayed) lp_relay_done(t, 0);
  atomic_fetch_sub(&ps->held, 1);
}

int lp_procs_push(luapool *eng, lp_task *t, int front) {
  lp_procs *ps = procs_of(eng, t->pool);
  pthread_mutex_lock(&ps->lock);
  if (ps->stopping || lp_task_cancelled(t)) {
    pthread_mutex_unlock(&ps->lock);
    cancel_unsent(eng, t);
    return 0;
  }
  if (lp_sendq_push(t->foreign ? &ps->relays : &ps->queue, t, front) != 0) {
    pthread_mutex_unlock(&ps->lock);
    return -1;
  }
  if (t->foreign)
    lp_feeder_poke_for_relay(ps, t->at_ref);
  else
    lp_feeder_poke_best(ps);
  long n = t->foreign ? ps->relays.n : ps->queue.n;
  pthread_mutex_unlock(&ps->lock);
  return n > INT_MAX ? INT_MAX : (int)n;
}

/* A task comes to the pool: from the engine, or handed over by a process.
 * (Tasks that go again after a death or a failure are still held.) */
int lp_procs_take(luapool *eng, lp_task *t) {
  lp_procs *ps = procs_of(eng, t->pool);
  atomic_fetch_add(&ps->held, 1);
  int rc = lp_procs_push(eng, t, 0);
  if (rc < 0) atomic_fetch_sub(&ps->held, 1);
  return rc;
}

static int place_push(lp_place *p, lp_task *t) { return lp_procs_take(((lp_procs *)p)->eng, t); }

/* The spawner waits for the queue, not on a timer: the feeders wake it as
 * they take tasks (feeder.c), so the processes never run out of them. */
static int place_hold(lp_place *p, lp_task *t, long bound) {
  lp_procs *ps = (lp_procs *)p;
  pthread_mutex_lock(&ps->lock);
  int held = !ps->stopping && ps->queue.n > bound;
  if (held) {
    lp_task_ref(t); /* until its wake */
    t->qnext = ps->room;
    ps->room = t;
    ps->room_below = bound / 4 * 3; /* woken early: the queue never runs dry */
  }
  pthread_mutex_unlock(&ps->lock);
  return held;
}

lp_task *lp_procs_room_take(lp_procs *ps, int all) {
  if (!ps->room || (!all && ps->queue.n > ps->room_below)) return NULL;
  lp_task *list = ps->room;
  ps->room = NULL;
  return list;
}

void lp_procs_room_wake(lp_task *list) {
  while (list) {
    lp_task *t = list;
    list = t->qnext;
    lp_task_wake(t);
    lp_task_unref(t);
  }
}

static int place_idle(lp_place *p) { return atomic_load(&((lp_procs *)p)->held) == 0; }

static void place_cancel(lp_place *p, lp_task *t) {
  lp_procs *ps = (lp_procs *)p;
  pthread_mutex_lock(&ps->lock);
  if (t->away && t->owner >= 0 && t->owner < ps->n) {
    lp_conn *c = &ps->conns[t->owner];
    lp_feeder_put_cancel(&c->out, t->id);
    poke(c);
  }
  pthread_mutex_unlock(&ps->lock);
}

void lp_procs_cancel_pool(luapool *eng, lp_procs *ps) {
  pthread_mutex_lock(&ps->lock);
  ps->stopping = 1;
  size_t n = 0;
  long nres = 0;
  for (int i = 0; i < ps->n; i++) nres += ps->conns[i].nresend;
  lp_task **unsent = malloc(sizeof *unsent * (size_t)(ps->queue.n + ps->relays.n + nres + 1));
  for (lp_task *t; unsent && (t = lp_sendq_pop(&ps->queue));) unsent[n++] = t;
  for (lp_task *t; unsent && (t = lp_sendq_pop(&ps->relays));) unsent[n++] = t;
  for (int i = 0; unsent && i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    for (lp_task *t = c->resend, *next; t; t = next) next = t->qnext, unsent[n++] = t;
    c->resend = NULL;
    c->nresend = 0;
  }
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    size_t mark;
    if (lp_wire_begin(&c->out, LP_MSG_STOP, &mark) == 0) lp_wire_end(&c->out, mark);
    poke(c);
  }
  lp_task *room = lp_procs_room_take(ps, 1);
  pthread_mutex_unlock(&ps->lock);
  lp_procs_room_wake(room); /* they see the cancel */
  for (size_t i = 0; i < n; i++) cancel_unsent(eng, unsent[i]);
  free(unsent);
}

static void place_cancel_all(lp_place *p) {
  lp_procs_cancel_pool(((lp_procs *)p)->eng, (lp_procs *)p);
}

/* ---- figures ---- */

static void place_totals(lp_place *p, lp_place_totals *out) {
  lp_procs *ps = (lp_procs *)p;
  {
    uint64_t failed = atomic_load(&ps->failed), undo = atomic_load(&ps->unfailed);
    pthread_mutex_lock(&ps->lock);
    out->queued += ps->queue.n + ps->relays.n;
    for (int i = 0; i < ps->n; i++) {
      const lp_rstats *rs[2] = {&ps->conns[i].now, &ps->conns[i].before};
      for (int j = 0; j < 2; j++) {
        const lp_rstats *r = rs[j];
        out->made += r->made;
        out->fin += r->fin;
        out->run += r->run;
        failed += r->failed;
        out->retried += r->retried;
        out->queued += r->queued;
        out->running += r->running;
        out->cpu += r->cpu;
        if (r->depth > out->depth) out->depth = r->depth;
      }
    }
    pthread_mutex_unlock(&ps->lock);
    out->retried += atomic_load(&ps->retried);
    out->failed += failed > undo ? failed - undo : 0;
  }
}

static int place_worker_stats(lp_place *p, luapool_worker_stats *out, int n) {
  lp_procs *ps = (lp_procs *)p;
  int k = 0;
  {
    pthread_mutex_lock(&ps->lock);
    for (int i = 0; i < ps->n; i++) {
      lp_conn *c = &ps->conns[i];
      for (int t = 0; t < ps->threads; t++, k++) {
        if (k >= n) continue;
        out[k].tasks_run = c->now.threads[t].run + c->before.threads[t].run;
        out[k].busy = c->now.threads[t].busy + c->before.threads[t].busy;
        out[k].process = ps->first_proc + i + 1;
        out[k].thread = t + 1;
      }
    }
    pthread_mutex_unlock(&ps->lock);
  }
  return k;
}

/* ---- start and stop ---- */

static int place_start(lp_place *p) {
  lp_procs *ps = (lp_procs *)p;
  luapool *eng = ps->eng;
  int pool = ps->pool;
  ps->n = eng->pools[pool].processes;
  lp_exe_worker(ps->exe, sizeof ps->exe);
  ps->threads = eng->pools[pool].threads > 0 ? eng->pools[pool].threads : 1;
  for (int i = 0; i < pool; i++) ps->first_proc += eng->pools[i].processes;
  ps->conns = calloc((size_t)ps->n, sizeof *ps->conns);
  if (!ps->conns) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    c->now.threads = calloc((size_t)ps->threads, sizeof *c->now.threads);
    c->before.threads = calloc((size_t)ps->threads, sizeof *c->before.threads);
    if (!c->now.threads || !c->before.threads)
      return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
    c->ps = ps;
    c->slot = i;
    c->fd = -1;
    c->pid = -1;
    lp_buf_init(&c->out);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_mutex_init(&c->mlock, NULL);
  }
  int rc = 0;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    pthread_mutex_lock(&ps->lock);
    int bad = lp_process_spawn(ps, c) != 0;
    pthread_mutex_unlock(&ps->lock);
    if (bad) {
      c->gone = 1;
      rc = lp_engine_error(eng, LUAPOOL_ESYS,
                           "cannot start worker process %s: %s (LUAPOOL_WORKER_EXE may name the "
                           "luapool binary to run)",
                           ps->exe, strerror(errno));
      break;
    }
    if (pthread_create(&c->reader, NULL, lp_reader_main, c) != 0 ||
        (pthread_create(&c->feeder, NULL, lp_feeder_main, c) != 0 &&
         (pthread_cancel(c->reader), pthread_join(c->reader, NULL), 1))) {
      rc = lp_engine_error(eng, LUAPOOL_ESYS, "cannot start the threads of worker process %d",
                           i + 1);
      break;
    }
    c->threads_started = 1;
  }
  /* Every process has loaded the script, or says why it could not. */
  pthread_mutex_lock(&ps->lock);
  for (int i = 0; i < ps->n && rc == 0; i++) {
    lp_conn *c = &ps->conns[i];
    while (!c->ready && !c->loaderr && !c->gone) pthread_cond_wait(&ps->ready_cond, &ps->lock);
    if (c->loaderr && !c->gone)
      rc = lp_engine_error(eng, LUAPOOL_ESCRIPT, "%s", c->loaderr);
    else if (!c->ready)
      rc = lp_engine_error(eng, LUAPOOL_ESYS, "worker process %d could not start: %s", i + 1,
                           c->loaderr ? c->loaderr : "no reason given");
  }
  pthread_mutex_unlock(&ps->lock);
  return rc;
}

static void place_stop(lp_place *p) {
  lp_procs *ps = (lp_procs *)p;
  pthread_mutex_lock(&ps->lock);
  ps->closing = 1;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    /* The process sees its socket close and leaves; the reader then sees
     * the end and stops. */
    if (c->fd >= 0) shutdown(c->fd, SHUT_WR);
    pthread_cond_signal(&c->cond);
  }
  pthread_mutex_unlock(&ps->lock);
  /* A worker stuck where it cannot see its socket close (a task in a C
   * call that never returns) gets two seconds, then SIGKILL. */
  for (int waited = 0;; waited++) {
    int left = 0;
    pthread_mutex_lock(&ps->lock);
    for (int i = 0; i < ps->n; i++) {
      lp_conn *c = &ps->conns[i];
      if (c->fd < 0 || c->pid <= 0) continue;
      left++;
      if (waited == 200) kill(c->pid, SIGKILL);
    }
    pthread_mutex_unlock(&ps->lock);
    if (!left || waited >= 200) break;
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (c->threads_started) {
      pthread_join(c->feeder, NULL);
      pthread_join(c->reader, NULL);
    } else if (c->fd >= 0 && c->pid > 0) {
      close(c->fd);
      kill(c->pid, SIGKILL);
      waitpid(c->pid, NULL, 0);
    }
    lp_buf_free(&c->out);
    free(c->tasks.slot);
    free(c->loaderr);
    free(c->now.threads);
    free(c->before.threads);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->wlock);
    pthread_mutex_destroy(&c->mlock);
  }
  for (lp_task *t; (t = lp_sendq_pop(&ps->queue));) lp_task_unref(t);
  for (lp_task *t; (t = lp_sendq_pop(&ps->relays));) lp_task_unref(t);
  for (int i = 0; i < ps->n; i++)
    for (lp_task *t = ps->conns[i].resend, *next; t; t = next) next = t->qnext, lp_task_unref(t);
  lp_sendq_free(&ps->queue);
  lp_sendq_free(&ps->relays);
  free(ps->conns);
  pthread_mutex_destroy(&ps->lock);
  pthread_cond_destroy(&ps->ready_cond);
  free(ps);
}

static const lp_place_ops procs_ops = {
    .start = place_start,
    .stop = place_stop,
    .push = place_push,
    .hold = place_hold,
    .cancel = place_cancel,
    .cancel_all = place_cancel_all,
    .idle = place_idle,
    .totals = place_totals,
    .worker_stats = place_worker_stats,
};

int lp_procs_attach(luapool *eng) {
  if (eng->inline_mode) return 0; /* a sequential run runs every task itself */
  for (int i = 0; i < eng->npools; i++) {
    if (!eng->pools[i].processes || eng->pools[i].place) continue;
    lp_procs *ps = calloc(1, sizeof *ps);
    if (!ps) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
    ps->base.ops = &procs_ops;
    ps->eng = eng;
    ps->pool = i;
    pthread_mutex_init(&ps->lock, NULL);
    pthread_cond_init(&ps->ready_cond, NULL);
    eng->pools[i].place = &ps->base; /* stopped and freed at close, started or not */
    if (lp_sendq_init(&ps->queue) != 0 || lp_sendq_init(&ps->relays) != 0)
      return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  }
  return 0;
}

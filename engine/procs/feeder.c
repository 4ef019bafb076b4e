/*
 * feeder.c - the feeder: one thread per process slot that sends the
 * process its tasks (EXEC batches, as many as it asked for with WANT)
 * and the frames other threads queued for it (CANCEL, REPLY, HUNGRY,
 * STOP, frames relayed), and watches the time limits of its tasks.
 *
 * The feeder of c alone writes frames to c's socket (INIT aside, written
 * as the process starts). It takes tasks and c->out under the pool's lock
 * and writes with the lock released, under c->wlock: the process cannot be
 * replaced meanwhile, so a batch reaches the process it was taken for or
 * goes back on the queue. Other threads queue frames on c->out under the
 * lock and wake the feeder (poke); the poke_* functions choose which one.
 */
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "procs.h"
#include "timer.h"

#define SEND_BATCH 512 /* tasks per EXEC batch */

/* Under lock: wakes the sleeping feeder whose process has the most room. */
void lp_feeder_poke_best(lp_procs *ps) {
  lp_conn *best = NULL;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (c->credits > 0 && c->waiting && (!best || c->credits > best->credits)) best = c;
  }
  if (best) poke(best);
}

/* Under lock: wakes a feeder for a task handed over by `from`: one whose
 * process asks for work, else any other, else from's own. */
void lp_feeder_poke_for_relay(lp_procs *ps, lp_conn *from) {
  lp_conn *pick = NULL;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (!c->ready || c->fd < 0) continue;
    if (!pick || (c != from && (pick == from || c->credits > pick->credits))) pick = c;
  }
  if (pick) {
    pick->relay_pick = 1;
    poke(pick);
  }
}

void lp_feeder_put_cancel(lp_buf *b, uint64_t id) {
  size_t mark;
  if (lp_wire_begin(b, LP_MSG_CANCEL, &mark) == 0 && lp_wire_u64(b, id) == 0) lp_wire_end(b, mark);
}

/* ---- time limits ---- */

/* The Lua hook in the worker stops a task over its time; a task stuck in C
 * code (a blocking call, a C loop) does not reach the hook. Past its limit
 * and this grace, its process is killed and the task fails as timed out. */
#define KILL_GRACE 1.0

/* Under lock. */
static void watchdog(lp_conn *c) {
  double now = lp_now();
  int late = 0;
  pthread_mutex_lock(&c->mlock);
  for (size_t i = 0; i < c->tasks.cap; i++) {
    lp_task *t = c->tasks.slot[i];
    if (t && t->at_started && t->deadline > 0 && now > t->deadline + KILL_GRACE &&
        !lp_task_finished(t) && !t->retry_pending) {
      t->at_overtime = 1;
      late = 1;
    }
  }
  pthread_mutex_unlock(&c->mlock);
  if (late && c->pid > 0 && c->fd >= 0) kill(c->pid, SIGKILL);
}

/* ---- the thread ---- */

static int put_exec(lp_buf *b, luapool *eng, lp_task *t) {
  size_t mark;
  const char *fn = lp_names_get(&eng->names, t->fn);
  if (lp_wire_begin(b, LP_MSG_EXEC, &mark) || lp_wire_u64(b, t->id) ||
      lp_wire_bytes(b, fn, strlen(fn)) || lp_wire_u64(b, (uint64_t)t->depth) ||
      lp_wire_f64(b, t->priority) || lp_wire_f64(b, t->timeout) ||
      lp_wire_bytes(b, t->args.data, t->args.len))
    return -1;
  lp_wire_end(b, mark);
  return 0;
}

/* Under lock: c's process asks for work and none is queued. The process
 * with the most tasks waiting (by its last STATS) is asked to hand some
 * over, at most every 5 ms. */
void lp_feeder_ask_to_share(lp_procs *ps, lp_conn *c) {
  lp_conn *busy = NULL;
  double now = lp_now();
  for (int i = 0; i < ps->n; i++) {
    lp_conn *o = &ps->conns[i];
    if (o == c || !o->ready || o->fd < 0 || now - o->asked_at < 0.005) continue;
    if (o->now.queued >= 2 && (!busy || o->now.queued > busy->now.queued)) busy = o;
  }
  if (!busy) return;
  long n = busy->now.queued / 2 < c->credits ? busy->now.queued / 2 : c->credits;
  size_t mark;
  if (lp_wire_begin(&busy->out, LP_MSG_HUNGRY, &mark) || lp_wire_u64(&busy->out, (uint64_t)n)) {
    busy->out.len = mark;
    return;
  }
  lp_wire_end(&busy->out, mark);
  busy->asked_at = now;
  busy->now.queued -= n; /* until its next STATS says otherwise */
  poke(busy);
}

void *lp_feeder_main(void *arg) {
  lp_conn *c = arg;
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  lp_buf frames;
  lp_buf_init(&frames);
  lp_task *batch[SEND_BATCH];
  double watched = lp_now();
  pthread_mutex_lock(&ps->lock);
  while (!ps->closing) {
    if (lp_now() - watched >= 0.2) {
      watchdog(c);
      watched = lp_now();
    }
    int sendable = c->ready && c->fd >= 0 && c->credits > 0 && ps->queue.n > 0;
    int relays = c->ready && c->fd >= 0 && ps->relays.n > 0 && c->relay_pick;
    int resends = c->ready && c->fd >= 0 && c->resend && c->credits > 0;
    if (c->ready && c->credits > 0 && ps->queue.n == 0 && !ps->relays.n && !ps->stopping)
      lp_feeder_ask_to_share(ps, c);
    if (!c->out.len && !sendable && !relays && !resends) {
      c->waiting = 1;
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200000000; /* the watchdog's round */
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&c->cond, &ps->lock, &ts);
      c->waiting = 0;
      if (lp_now() - watched >= 0.2) {
        watchdog(c);
        watched = lp_now();
      }
      continue;
    }
    /* Few tasks and several processes asking: share them out, the
     * process with the most room first. */
    long asking = 0, room = 0;
    lp_conn *best = c;
    for (int i = 0; i < ps->n; i++) {
      lp_conn *o = &ps->conns[i];
      if (o->credits <= 0 || !o->ready) continue;
      asking++;
      room += o->credits;
      if (o->credits > best->credits) best = o;
    }
    if (sendable && !relays && !resends && best != c && ps->queue.n < asking && !c->out.len) {
      poke(best);
      c->waiting = 1;
      pthread_cond_wait(&c->cond, &ps->lock);
      c->waiting = 0;
      continue;
    }
    /* Only now: frames taken out of c->out before that wait were dropped
     * (a REPLY lost there left its task waiting for good). */
    lp_buf_reset(&frames);
    lp_buf_append(&frames, c->out.data, c->out.len);
    lp_buf_reset(&c->out);
    long share =
        room > 0 && room > c->credits ? (ps->queue.n * c->credits + room - 1) / room : ps->queue.n;
    long want = share < c->credits ? share : c->credits;
    /* What its last process left first, within what it asked for; then
     * tasks handed over, outside the credits; then the queue. */
    int nr = 0;
    while (c->resend && nr < SEND_BATCH / 4 && nr < c->credits) {
      batch[nr++] = c->resend;
      c->resend = c->resend->qnext;
      c->nresend--;
    }
    c->credits -= nr;
    if (want > c->credits) want = c->credits;
    if (want < 0) want = 0;
    nr += relays ? lp_sendq_take(&ps->relays, batch + nr, SEND_BATCH / 4) : 0;
    c->relay_pick = 0;
    int nq = sendable ? lp_sendq_take(&ps->queue, batch + nr,
                                      want < SEND_BATCH / 2 ? (int)want : SEND_BATCH / 2)
                      : 0;
    int n = nr + nq;
    c->credits -= nq;
    if (ps->queue.n > 0) lp_feeder_poke_best(ps); /* what is left goes to the others */
    if (ps->relays.n > 0) lp_feeder_poke_for_relay(ps, c);
    unsigned gen = c->gen;
    lp_task *held = nq ? lp_procs_room_take(ps, 0) : NULL;
    pthread_mutex_unlock(&ps->lock);
    lp_procs_room_wake(held); /* spawners held back by a flood */
    /* Under wlock the process cannot be replaced: the batch reaches the
     * process it was taken for, or goes back on the queue. */
    pthread_mutex_lock(&c->wlock);
    int live = c->gen == gen && c->fd >= 0;
    int sent = 0;
    pthread_mutex_lock(&c->mlock);
    for (; live && sent < n; sent++) {
      lp_task *t = batch[sent];
      if (put_exec(&frames, eng, t) != 0 || lp_idmap_put(&c->tasks, t) != 0) break;
      t->owner = c->slot;
      t->at_started = 0;
      lp_task_ref(t); /* the connection's, until DONE */
      lp_task_away_begin(t);
      /* Cancelled while it waited in the queue (lp_task_cancel saw it
       * queued and sent nothing): the CANCEL follows its EXEC. The fence
       * pairs with lp_task_cancel's: it sees RUNNING, or this sees cancel. */
      atomic_thread_fence(memory_order_seq_cst);
      if (lp_task_cancelled(t)) lp_feeder_put_cancel(&frames, t->id);
    }
    pthread_mutex_unlock(&c->mlock);
    if (live) lp_wire_write_all(c->fd, frames.data, frames.len);
    pthread_mutex_unlock(&c->wlock);
    pthread_mutex_lock(&ps->lock);
    for (int i = n - 1; i >= sent; i--) /* room: they were in it */
      lp_sendq_push(batch[i]->foreign ? &ps->relays : &ps->queue, batch[i], 1);
  }
  pthread_mutex_unlock(&ps->lock);
  lp_buf_free(&frames);
  return NULL;
}

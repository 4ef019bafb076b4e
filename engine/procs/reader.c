/*
 * reader.c - the reader: one thread per process slot that reads what the
 * process reports (READY, LOADERR, WANT, STARTED, RESULT, RECORD, DONE,
 * STATS, TRACE, EXPORT, CANCEL, COUNTER, FAILURE) and acts on it: it
 * finishes tasks, ends their remote subtrees, keeps the process's figures.
 * When the socket ends or a frame is malformed, the reader replaces the
 * process (process.c).
 *
 * The reader of c alone reads c's socket. The tasks sent to c are in
 * c->tasks, under c->mlock; the figures and credits under the pool's lock.
 * Task callbacks (finish, wake) run with no lock held.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"
#include "procs.h"
#include "sync.h"
#include "timer.h"
#include "trace.h"

/* ---- what a process reports ---- */

static lp_task *lookup(lp_conn *c, uint64_t id, int take) {
  pthread_mutex_lock(&c->mlock);
  lp_task *t = take ? lp_idmap_take(&c->tasks, id) : lp_idmap_get(&c->tasks, id);
  pthread_mutex_unlock(&c->mlock);
  return t;
}

static void finish_remote(luapool *eng, lp_task *t, int state, const char *res, size_t len,
                          const char *note, size_t notelen) {
  if (t->foreign) {
    lp_relay_result(t, state, res, len, note, notelen);
    atomic_store(&t->state, state);
    return;
  }
  lp_task_finish_away(t, (lp_task_state)state, res, len, note, notelen);
  (void)eng;
}

/* The subtree of t, sent to a process, has ended (or the process died). */
void lp_reader_subtree_over(lp_procs *ps, lp_task *t) {
  luapool *eng = ps->eng;
  if (t->retry_pending) {
    atomic_fetch_add(&ps->retried, 1);
    t->at_started = 0;
    lp_task_retry_begin(t); /* the failed attempt's records go */
    atomic_store(&t->state, LP_TASK_QUEUED);
    lp_task_away_done(t, 1); /* the body's unit stays: it runs again */
    lp_procs_push(eng, t, 0);
    lp_task_unref(t);
    return;
  }
  if (t->foreign) {
    lp_record *held = lp_task_take_held(t);
    for (lp_record *r = held; r; r = (lp_record *)atomic_load(&r->item.next))
      lp_relay_record(t, eng, r);
    lp_record_free_list(held);
    lp_relay_done(t, 1);
    atomic_fetch_sub(&ps->held, 1);
    return;
  }
  lp_task_away_done(t, 0);
  atomic_fetch_sub(&ps->held, 1);
  lp_task_unref(t); /* the connection's */
}

static void on_result(lp_conn *c, lp_wire_msg *m) {
  uint64_t id, state, done;
  const char *res, *note;
  size_t len, notelen;
  if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &state) || lp_wire_get_u64(m, &done) ||
      lp_wire_get_bytes(m, &res, &len) || lp_wire_get_bytes(m, &note, &notelen) ||
      state < LP_TASK_OK || state > LP_TASK_CANCELLED)
    return;
  lp_task *t = lookup(c, id, done != 0);
  if (!t) return;
  if (!lp_task_finished(t) && !t->retry_pending) {
    if (state == LP_TASK_FAILED && lp_task_retry(t)) { /* again once its subtree is over */
      atomic_fetch_add(&c->ps->unfailed, 1);
    } else
      finish_remote(c->ps->eng, t, (int)state, res, len, note, notelen);
  }
  if (done) lp_reader_subtree_over(c->ps, t);
}

static void on_record(lp_conn *c, lp_wire_msg *m) {
  uint64_t id, kind, task;
  const char *fn, *data;
  size_t fnlen, len;
  double prio;
  if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &kind) || lp_wire_get_u64(m, &task) ||
      lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_f64(m, &prio) ||
      lp_wire_get_bytes(m, &data, &len) || kind > LUAPOOL_RECORD_PRINT)
    return;
  lp_task *t = lookup(c, id, 0);
  if (!t) return;
  luapool *eng = c->ps->eng;
  lp_record *rec = lp_record_new((int)kind, NULL, prio, data, len);
  if (!rec) return;
  rec->task = task;
  rec->fn = lp_names_intern(&eng->names, fn, fnlen);
  if (t->foreign && t->retries > 0) { /* kept until no retry can come */
    lp_task_keep(t, rec);
  } else if (t->foreign) {
    lp_relay_record(t, eng, rec);
    free(rec);
  } else if (lp_report_add(&eng->report, t, rec)) {
    /* Past the bound, waiting for the output: the pipe waits too, which
     * holds the process's own tasks back (their records wait there). */
    lp_hold_block(&eng->report);
  }
}

static void on_stats(lp_conn *c, lp_wire_msg *m) {
  lp_procs *ps = c->ps;
  uint64_t v[8], n;
  double cpu;
  for (int i = 0; i < 8; i++)
    if (lp_wire_get_u64(m, &v[i])) return;
  if (lp_wire_get_f64(m, &cpu) || lp_wire_get_u64(m, &n) || n > (uint64_t)ps->threads ||
      v[7] > INT32_MAX)
    return;
  pthread_mutex_lock(&ps->lock);
  lp_rstats *r = &c->now;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t run;
    double busy;
    if (lp_wire_get_u64(m, &run) || lp_wire_get_f64(m, &busy)) break;
    r->threads[i].run = run;
    r->threads[i].busy = busy;
  }
  r->made = v[0];
  r->fin = v[1];
  r->queued = (long)(v[2] & LONG_MAX);
  r->running = (long)(v[3] & LONG_MAX);
  r->run = v[4];
  r->failed = v[5];
  r->retried = v[6];
  r->depth = (int)v[7];
  r->cpu = cpu;
  /* Tasks wait here while another process asks for work in vain. */
  for (int i = 0; i < ps->n && r->queued >= 2 && ps->queue.n == 0 && !ps->stopping; i++) {
    lp_conn *o = &ps->conns[i];
    if (o != c && o->ready && o->credits > 0) lp_feeder_ask_to_share(ps, o);
  }
  pthread_mutex_unlock(&ps->lock);
}

static void on_trace(lp_conn *c, lp_wire_msg *m) {
  uint64_t thread, kind, depth;
  lp_trace_ev e;
  const char *fn;
  size_t fnlen;
  if (lp_wire_get_u64(m, &thread) || lp_wire_get_u64(m, &kind) || lp_wire_get_u64(m, &e.ts) ||
      lp_wire_get_u64(m, &e.end) || lp_wire_get_u64(m, &e.task) || lp_wire_get_u64(m, &e.other) ||
      lp_wire_get_u64(m, &depth) || lp_wire_get_bytes(m, &fn, &fnlen) || thread < 1 ||
      thread > (uint64_t)c->ps->threads || kind > LP_TRACE_SPAWN)
    return;
  e.kind = (int16_t)kind;
  e.depth = depth > INT16_MAX ? INT16_MAX : (int16_t)depth;
  e.fn = 0;
  if (e.kind == LP_TRACE_SLICE && e.end < e.ts) e.end = e.ts;
  lp_trace_remote(c->ps->eng, c->ps->first_proc + c->slot + 1, (int)thread, &e, fn, fnlen);
}

static void on_frame(lp_conn *c, lp_wire_msg *m) {
  lp_procs *ps = c->ps;
  uint64_t v;
  const char *p;
  size_t n;
  lp_task *t;
  switch (m->type) {
    case LP_MSG_READY:
      if (lp_wire_get_u64(m, &v) != 0 || v > 1000000) break;
      pthread_mutex_lock(&ps->lock);
      c->ready = 1;
      c->credits += (long)v;
      poke(c);
      pthread_cond_broadcast(&ps->ready_cond);
      pthread_mutex_unlock(&ps->lock);
      break;
    case LP_MSG_LOADERR:
      if (lp_wire_get_bytes(m, &p, &n) != 0) break;
      pthread_mutex_lock(&ps->lock);
      if (!c->loaderr) c->loaderr = strndup(p, n);
      pthread_cond_broadcast(&ps->ready_cond);
      pthread_mutex_unlock(&ps->lock);
      break;
    case LP_MSG_WANT:
      if (lp_wire_get_u64(m, &v) != 0 || v > 1000000) break;
      pthread_mutex_lock(&ps->lock);
      c->credits += (long)v;
      poke(c);
      pthread_mutex_unlock(&ps->lock);
      break;
    case LP_MSG_STARTED:
      if (lp_wire_get_u64(m, &v) != 0) break;
      pthread_mutex_lock(&c->mlock);
      if ((t = lp_idmap_get(&c->tasks, v))) {
        t->at_started = 1;
        t->attempts++;
        if (t->timeout > 0) t->deadline = lp_now() + t->timeout;
      }
      pthread_mutex_unlock(&c->mlock);
      break;
    case LP_MSG_STATS: on_stats(c, m); break;
    case LP_MSG_TRACE: on_trace(c, m); break;
    case LP_MSG_EXPORT: lp_relay_export(c, m); break;
    case LP_MSG_CANCEL:
      if (lp_wire_get_u64(m, &v) == 0) lp_relay_cancel_export(ps, v);
      break;
    case LP_MSG_RESULT: on_result(c, m); break;
    case LP_MSG_RECORD: on_record(c, m); break;
    case LP_MSG_DONE:
      if (lp_wire_get_u64(m, &v) == 0 && (t = lookup(c, v, 1))) lp_reader_subtree_over(ps, t);
      break;
    case LP_MSG_COUNTER: {
      uint64_t req, delta, add;
      if (lp_wire_get_u64(m, &req) || lp_wire_get_bytes(m, &p, &n) || lp_wire_get_u64(m, &delta) ||
          lp_wire_get_u64(m, &add))
        break;
      int id = lp_names_intern(&ps->eng->names, p, n);
      _Atomic int64_t *slot = id >= 0 ? lp_sync_counter(ps->eng, id) : NULL;
      int64_t value = 0;
      if (slot && add)
        value = atomic_fetch_add(slot, (int64_t)delta) + (int64_t)delta;
      else if (slot)
        value = atomic_load(slot);
      size_t mark;
      pthread_mutex_lock(&ps->lock);
      if (lp_wire_begin(&c->out, LP_MSG_REPLY, &mark) == 0 && lp_wire_u64(&c->out, req) == 0 &&
          lp_wire_u64(&c->out, (uint64_t)value) == 0)
        lp_wire_end(&c->out, mark);
      poke(c);
      pthread_mutex_unlock(&ps->lock);
      break;
    }
    case LP_MSG_FAILURE:
      if (lp_wire_get_bytes(m, &p, &n) != 0) break;
      char *text = strndup(p, n);
      if (!text) break;
      atomic_fetch_add(&ps->eng->unawaited_failures, 1);
      lp_report_failure(&ps->eng->report, text);
      free(text);
      break;
    default: break;
  }
}

/* ---- the thread ---- */

void *lp_reader_main(void *arg) {
  lp_conn *c = arg;
  lp_procs *ps = c->ps;
  lp_buf in;
  lp_buf_init(&in);
  for (;;) {
    pthread_mutex_lock(&ps->lock);
    int fd = c->fd, gone = c->gone;
    pthread_mutex_unlock(&ps->lock);
    if (gone || fd < 0) break;
    if (lp_buf_reserve(&in, 65536) != 0) break;
    ssize_t n = read(fd, in.data + in.len, 65536);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      lp_buf_reset(&in);
      lp_process_died(c, NULL);
      if (ps->closing) break;
      continue;
    }
    in.len += (size_t)n;
    size_t off = 0;
    long k;
    lp_wire_msg m;
    while ((k = lp_wire_frame(in.data + off, in.len - off, &m)) > 0) {
      on_frame(c, &m);
      off += (size_t)k;
    }
    if (k < 0) {
      lp_buf_reset(&in);
      lp_process_died(c, "sent a malformed message");
      if (ps->closing) break;
      continue;
    }
    memmove(in.data, in.data + off, in.len - off);
    in.len -= off;
  }
  lp_buf_free(&in);
  return NULL;
}

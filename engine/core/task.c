/*
 * task.c - task records, completion counting and waking waiters.
 *
 * DESIGN. A task record is shared by the worker that runs it, the task that
 * spawned it (through a future), its children (through `parent`) and any
 * waiter. It lives while `refs` > 0: one reference belongs to the pending
 * subtree and is dropped when `pending` reaches zero, one belongs to each
 * future (a Lua userdata in some worker state, or a host handle).
 *
 * Completion counting: `pending` is 1 while the task's body runs plus 1 per
 * child whose subtree has not completed. The thread that brings it to zero
 * completes the subtree and decrements the parent, so a run is over exactly
 * when its root reaches zero, under every interleaving, with no global
 * counter.
 *
 * The spinlock `lock` guards `waiters` against the finish that empties it;
 * fire() callbacks run after it is released. The outcome (`state`,
 * `result`) is written once, before `state` is published with release
 * order; readers check lp_task_finished() (acquire) first.
 */
#include "task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "report.h"
#include "spin.h"

_Thread_local lp_task_cache *lp_task_cache_self __attribute__((tls_model("initial-exec")));

#define ID_BLOCK 1024

void lp_task_cache_init(lp_task_cache *c) {
  lp_fl_init(&c->tasks, sizeof(lp_task));
  lp_fl_init(&c->nodes, sizeof(lp_rnode));
  c->next_id = c->end_id = 0;
  atomic_init(&c->created, 0);
  atomic_init(&c->finished, 0);
  c->held_delta = 0;
  c->spill = NULL;
}

void lp_task_cache_drain(lp_task_cache *c) {
  lp_fl_drain(&c->tasks);
  lp_fl_drain(&c->nodes);
}

static void free_record(lp_task *t) {
  lp_task_cache *home = t->home, *self = lp_task_cache_self;
  lp_fl_free(home ? &home->tasks : NULL, self ? &self->tasks : NULL, t);
}

static uint64_t next_id(luapool *eng, lp_task_cache *c) {
  if (!c) return atomic_fetch_add_explicit(&eng->next_id, 1, memory_order_relaxed);
  if (c->next_id == c->end_id) {
    c->next_id = atomic_fetch_add_explicit(&eng->next_id, ID_BLOCK, memory_order_relaxed);
    c->end_id = c->next_id + ID_BLOCK;
  }
  return c->next_id++;
}

lp_task *lp_task_new(struct luapool *eng, lp_task *parent, int fn, double priority, lp_buf *args) {
  lp_task_cache *c = lp_task_cache_self;
  lp_task *t = lp_fl_alloc(c ? &c->tasks : NULL, sizeof *t);
  if (!t) {
    lp_buf_free(args);
    return NULL;
  }
  /* Every field is set here; no memset of the whole record. */
  t->id = next_id(eng, c);
  if (c)
    lp_stats_inc(&c->created);
  else
    lp_stats_host_created(eng);
  t->home = c;
  t->eng = eng;
  t->parent = parent;
  t->fn = fn;
  t->depth = parent ? parent->depth + 1 : 0;
  t->pool = parent ? parent->pool : 0;
  t->priority = priority;
  t->qnext = NULL;
  atomic_init(&t->refs, 1);
  atomic_init(&t->pending, 1);
  atomic_init(&t->state, LP_TASK_QUEUED);
  atomic_init(&t->cancel, 0);
  atomic_init(&t->awaited, 0);
  atomic_init(&t->lock, 0);
  t->waiters = NULL;
  lp_buf_init(&t->args);
  lp_buf_move(&t->args, args);
  lp_buf_init(&t->result);
  t->failnote = NULL;
  t->owner = -1;
  t->co = NULL;
  t->co_base = NULL;
  t->co_slot = -1;
  t->timer_slot = -1;
  atomic_init(&t->armed, 0);
  t->self_waiter.next = t->self_waiter.prev = NULL;
  t->cancel_epoch = 0;
  t->rn = NULL;
  t->timeout = 0;
  t->deadline = 0;
  t->retries = 0;
  t->away = 0;
  t->foreign = 0;
  t->at_started = 0;
  t->at_resent = 0;
  t->at_overtime = 0;
  t->retry_pending = 0;
  t->attempts = 0;
  t->held = t->held_tail = NULL;
  t->at_ref = NULL;
  t->at_gen = 0;
  if (parent) atomic_fetch_add_explicit(&parent->pending, 1, memory_order_relaxed);
  return t;
}

void lp_task_ref(lp_task *t) { atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed); }

void lp_task_unref(lp_task *t) {
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  if (atomic_load(&t->state) == LP_TASK_FAILED && !atomic_load(&t->awaited))
    lp_engine_unawaited_failure(t->eng, t);
  lp_buf_free(&t->args);
  lp_buf_free(&t->result);
  free(t->failnote);
  lp_record_free_list(t->held);
  free_record(t);
}

/* The subtree of t is complete: tell the parent, and so on upwards. */
static void subtree_done(lp_task *t) {
  while (t) {
    lp_task *p = t->parent;
    luapool *eng = t->eng;
    if (!p) {
      /* The host may return from its wait as soon as it hears of the
       * root: an unawaited failure must be counted before that. With an
       * uplink, the uplink still holds the record. */
      if (eng->up) {
        lp_engine_root_done(eng, t);
        lp_task_unref(t);
      } else {
        lp_task_unref(t);
        lp_engine_root_done(eng, NULL);
      }
      return;
    }
    lp_task_unref(t);
    long v = atomic_load_explicit(&p->pending, memory_order_relaxed), nv;
    do {
      nv = v - 1;
      if ((v & LP_JOIN_FLAG) && (v & ~LP_JOIN_FLAG) == 2) nv &= ~LP_JOIN_FLAG;
    } while (!atomic_compare_exchange_weak(&p->pending, &v, nv));
    if ((v & LP_JOIN_FLAG) && !(nv & LP_JOIN_FLAG)) { /* we own the join reference */
      lp_task_wake(p);
      lp_task_unref(p);
      return;
    }
    if (nv != 0) return;
    t = p;
  }
}

/* A failure after retries says how many runs it took: the note goes after
 * "task 'NAME' (id N) failed", the head every failure message starts with
 * (made here, in the worker or process that ran the last attempt). */
static void note_attempts(lp_task *t, lp_buf *msg) {
  const char *s;
  size_t len;
  char head[320], note[48];
  if (!lp_pack_single_string(msg->data, msg->len, &s, &len)) return;
  int hn = snprintf(head, sizeof head, "task '%s' (id %llu) failed",
                    lp_names_get(&t->eng->names, t->fn), (unsigned long long)t->id);
  if (hn <= 0 || (size_t)hn >= sizeof head || len < (size_t)hn || memcmp(s, head, (size_t)hn) != 0)
    return;
  lp_task_attempts_note(t, note, sizeof note);
  size_t nn = strlen(note);
  char *text = malloc(len + nn);
  if (!text) return;
  memcpy(text, s, (size_t)hn);
  memcpy(text + hn, note, nn);
  memcpy(text + hn + nn, s + hn, len - (size_t)hn);
  lp_buf out;
  lp_buf_init(&out);
  if (lp_pack_begin(&out, 1) == 0 && lp_pack_put_string(&out, text, len + nn) == 0) {
    lp_buf_free(msg);
    lp_buf_move(msg, &out);
  }
  lp_buf_free(&out);
  free(text);
}

void lp_task_finish(lp_task *t, lp_task_state state, lp_buf *result) {
  if (state == LP_TASK_FAILED && t->attempts > 1 && result) note_attempts(t, result);
  if (lp_task_cache_self)
    lp_stats_inc(&lp_task_cache_self->finished);
  else
    lp_stats_host_finished(t->eng);
  lp_spin_lock(&t->lock);
  if (result) lp_buf_move(&t->result, result);
  atomic_store_explicit(&t->state, (int)state, memory_order_release);
  lp_waiter *w = t->waiters;
  t->waiters = NULL;
  /* Under the lock: a record made after this goes past t, and must come
   * after the ones t held. */
  if (t->held && !t->foreign) {
    lp_report_release(&t->eng->report, t, t->held);
    t->held = t->held_tail = NULL;
  }
  lp_spin_unlock(&t->lock);
  lp_report_body_done(&t->eng->report, t);
  /* --fail-fast: a failure that no task is waiting for stops the run. */
  if (state == LP_TASK_FAILED && !w && t->eng->cfg.fail_fast) lp_engine_cancel(t->eng);
  while (w) {
    lp_waiter *next = w->next;
    w->next = w->prev = NULL;
    w->fire(w, t);
    w = next;
  }
  if (atomic_fetch_sub(&t->pending, 1) == 1) subtree_done(t);
}

void lp_task_finish_away(lp_task *t, lp_task_state state, const char *res, size_t len,
                         const char *note, size_t notelen) {
  if (notelen && !t->failnote) t->failnote = strndup(note, notelen);
  lp_buf b;
  lp_buf_init(&b);
  if (lp_buf_append(&b, res, len) != 0) lp_buf_reset(&b);
  lp_task_finish(t, state, &b);
  lp_buf_free(&b);
}

void lp_task_keep(lp_task *t, lp_record *rec) {
  atomic_store_explicit(&rec->item.next, NULL, memory_order_relaxed);
  if (t->held_tail)
    atomic_store_explicit(&t->held_tail->item.next, &rec->item, memory_order_relaxed);
  else
    t->held = rec;
  t->held_tail = rec;
}

int lp_task_hold(lp_task *t, lp_record *rec) {
  lp_spin_lock(&t->lock);
  int held = !lp_task_finished(t);
  if (held) lp_task_keep(t, rec);
  lp_spin_unlock(&t->lock);
  return held;
}

lp_record *lp_task_take_held(lp_task *t) {
  lp_spin_lock(&t->lock);
  lp_record *r = t->held;
  t->held = t->held_tail = NULL;
  lp_spin_unlock(&t->lock);
  return r;
}

const char *lp_task_attempts_note(const lp_task *t, char *buf, size_t n) {
  if (t->attempts > 1)
    snprintf(buf, n, " (after %d attempts)", t->attempts);
  else if (n)
    buf[0] = '\0';
  return buf;
}

int lp_task_watch(lp_task *t, lp_waiter *w) {
  lp_spin_lock(&t->lock);
  if (lp_task_finished(t)) {
    lp_spin_unlock(&t->lock);
    return 1;
  }
  w->prev = NULL;
  w->next = t->waiters;
  if (t->waiters) t->waiters->prev = w;
  t->waiters = w;
  lp_spin_unlock(&t->lock);
  return 0;
}

int lp_task_unwatch(lp_task *t, lp_waiter *w) {
  lp_spin_lock(&t->lock);
  /* A fired node was unlinked by lp_task_finish before fire(). */
  int linked = w->prev || t->waiters == w;
  if (linked) {
    if (w->prev)
      w->prev->next = w->next;
    else
      t->waiters = w->next;
    if (w->next) w->next->prev = w->prev;
    w->next = w->prev = NULL;
  }
  lp_spin_unlock(&t->lock);
  return linked;
}

int lp_task_join_begin(lp_task *t) {
  lp_task_ref(t);
  long v = atomic_fetch_or(&t->pending, LP_JOIN_FLAG);
  if ((v & ~LP_JOIN_FLAG) != 1) return 0;
  if (lp_task_join_end(t)) return 0; /* a child cleared it meanwhile: wait for its wake */
  return 1;
}

int lp_task_join_end(lp_task *t) {
  long v = atomic_fetch_and(&t->pending, ~LP_JOIN_FLAG);
  if (!(v & LP_JOIN_FLAG)) return 1;
  lp_task_unref(t); /* ours again; the body keeps the record alive */
  return 0;
}

void lp_task_away_begin(lp_task *t) {
  t->away = 1; /* before the state: a cancel that sees it running asks the place */
  atomic_store(&t->state, LP_TASK_RUNNING);
  atomic_fetch_add(&t->pending, 1);
}

void lp_task_away_done(lp_task *t, int again) {
  t->away = 0;
  if (!again) lp_report_away_done(&t->eng->report, t);
  if (atomic_fetch_sub(&t->pending, 1) == 1) subtree_done(t);
}

void lp_task_wake(lp_task *t) {
  if (lp_task_disarm(t)) lp_sched_resume(&t->eng->sched, t->owner, t);
}

int lp_task_retry(lp_task *t) {
  if (t->retries <= 0 || lp_task_cancelled(t)) return 0;
  t->retry_pending = 1;
  return 1;
}

void lp_task_retry_begin(lp_task *t) {
  t->retry_pending = 0;
  t->retries--;
  lp_report_retry(&t->eng->report, t);
}

int lp_task_cancelled(lp_task *t) {
  if (atomic_load_explicit(&t->eng->stopping, memory_order_relaxed)) return 1;
  for (lp_task *p = t; p; p = p->parent)
    if (atomic_load_explicit(&p->cancel, memory_order_relaxed)) return 1;
  return 0;
}

int lp_task_cancel(lp_task *t) {
  if (lp_task_finished(t)) return 0;
  atomic_store(&t->cancel, 1);
  atomic_fetch_add(&t->eng->cancel_epoch, 1);
  /* A suspended task notices at its next resume; make that now. Queued
   * tasks notice when a worker takes them. */
  if (atomic_load(&t->state) == LP_TASK_RUNNING) {
    if (t->away)
      lp_place_cancel(t->eng, t);
    else
      lp_task_wake(t);
  }
  return 1;
}

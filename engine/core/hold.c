/*
 * hold.c - the memory bound of held records (--hold, luapool_config.hold).
 *
 * DESIGN. Records in memory are counted in bytes: a producer (a worker
 * running a task, a process reader) adds what it makes, the host (the
 * thread that walks the report's cursor) subtracts what it hands on or
 * frees. Each side keeps its count locally and publishes it into
 * `r->mem` every LP_HOLD_BATCH bytes, so the count costs no shared write
 * per record; it is off by at most a batch per thread.
 *
 * Past the bound a record is either waiting for its turn (tree and
 * priority order: an earlier task has not finished, or the run has not)
 * or waiting for the output (completion order, or it sits in the
 * sequence the cursor is in). The first kind goes to a spill file: its
 * sequence gets an lp_spilled item instead, which the host reads back
 * when the cursor gets there. The second kind stays, and its task waits
 * for room, without holding its worker: the host wakes every such task
 * each time it has handed on all it could. A task thus never waits on
 * a record that waits for its turn, which could wait on that very task.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "spill.h"
#include "spin.h"
#include "task.h"

long long lp_record_bytes(const lp_record *rec) {
  return (long long)sizeof *rec + (long long)rec->len + 1 + 16; /* 16: malloc's own */
}

static long long publish(lp_report *r, long long d) {
  long long now = atomic_fetch_add_explicit(&r->mem, d, memory_order_relaxed) + d;
  long long peak = atomic_load_explicit(&r->peak, memory_order_relaxed);
  while (now > peak && !atomic_compare_exchange_weak_explicit(
                           &r->peak, &peak, now, memory_order_relaxed, memory_order_relaxed)) {
  }
  return now;
}

long long lp_hold_count(lp_report *r, long long d) {
  lp_task_cache *c = lp_task_cache_self;
  if (!c) return publish(r, d);
  c->held_delta += d;
  if (c->held_delta < LP_HOLD_BATCH && c->held_delta > -LP_HOLD_BATCH)
    return atomic_load_explicit(&r->mem, memory_order_relaxed) + c->held_delta;
  long long now = publish(r, c->held_delta);
  c->held_delta = 0;
  return now;
}

/* What the host left in memory when it last caught up (the floor) waits
 * for its turn; what came after it waits for the output. That may grow
 * to the bound, and to a quarter of it at least. */
static long long backlog_limit(lp_report *r, long long floor) {
  long long room = r->bound - floor;
  return room > r->bound / 4 ? room : r->bound / 4;
}

int lp_hold_must_wait(lp_report *r, long long mem) {
  long long floor = atomic_load_explicit(&r->floor, memory_order_relaxed);
  return mem - floor > backlog_limit(r, floor);
}

void lp_hold_host(lp_report *r, long long d) {
  r->host_delta += d;
  if (r->host_delta <= -LP_HOLD_BATCH || r->host_delta >= LP_HOLD_BATCH) lp_hold_publish(r);
}

void lp_hold_publish(lp_report *r) {
  if (!r->host_delta) return;
  long long now = publish(r, r->host_delta);
  r->host_delta = 0;
  /* The output has taken a quarter of what waited for it: the waiting
   * tasks make records again while the host hands on the rest, so neither
   * side sits idle waiting for the other. */
  long long floor = atomic_load_explicit(&r->floor, memory_order_relaxed);
  if (now - floor < backlog_limit(r, floor) / 4 * 3) lp_hold_wake(r);
}

void lp_hold_wait(lp_report *r, lp_task *t) {
  lp_task_ref(t); /* the wake below may come after a cancel has ended it */
  lp_spin_lock(&r->wlock);
  if (r->nwaiting == r->capwaiting) {
    size_t cap = r->capwaiting ? r->capwaiting * 2 : 16;
    lp_task **w = realloc(r->waiting, cap * sizeof *w);
    if (!w) { /* out of memory: it goes on at once rather than waiting */
      lp_spin_unlock(&r->wlock);
      lp_task_wake(t);
      lp_task_unref(t);
      return;
    }
    r->waiting = w;
    r->capwaiting = cap;
  }
  r->waiting[r->nwaiting++] = t;
  atomic_store_explicit(&r->nwaiting_pub, (int)r->nwaiting, memory_order_release);
  lp_spin_unlock(&r->wlock);
}

void lp_hold_wake(lp_report *r) {
  if (atomic_load_explicit(&r->nblocked, memory_order_relaxed)) {
    pthread_mutex_lock(&r->room_lock);
    r->room_passes++;
    pthread_cond_broadcast(&r->room_cond);
    pthread_mutex_unlock(&r->room_lock);
  }
  if (!atomic_load_explicit(&r->nwaiting_pub, memory_order_acquire)) return;
  lp_spin_lock(&r->wlock);
  lp_task **all = r->waiting;
  size_t n = r->nwaiting;
  r->waiting = NULL;
  r->nwaiting = r->capwaiting = 0;
  atomic_store_explicit(&r->nwaiting_pub, 0, memory_order_release);
  lp_spin_unlock(&r->wlock);
  for (size_t i = 0; i < n; i++) lp_task_wake(all[i]);
  for (size_t i = 0; i < n; i++) lp_task_unref(all[i]);
  free(all);
}

void lp_hold_block(lp_report *r) {
  pthread_mutex_lock(&r->room_lock);
  uint64_t pass = r->room_passes;
  atomic_fetch_add_explicit(&r->nblocked, 1, memory_order_relaxed);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += 50L * 1000000; /* at most: a stall, never a hang, whatever the host does */
  if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
  while (r->room_passes == pass)
    if (pthread_cond_timedwait(&r->room_cond, &r->room_lock, &ts) != 0) break;
  atomic_fetch_sub_explicit(&r->nblocked, 1, memory_order_relaxed);
  pthread_mutex_unlock(&r->room_lock);
}

int lp_hold_waiting(lp_report *r) {
  return atomic_load_explicit(&r->nwaiting_pub, memory_order_acquire) > 0;
}

/* ---- spilled sequences ---- */

/* The calling thread's spill file: its worker's own, or the one shared by
 * threads without one. NULL: none can be made (the run's spill error says
 * why). */
static lp_spill_file *writer(lp_report *r) {
  lp_task_cache *c = lp_task_cache_self;
  if (c) {
    if (!c->spill) c->spill = lp_spill_new(r);
    return c->spill;
  }
  lp_spin_lock(&r->wlock); /* the shared file is made once */
  if (!r->shared) {
    lp_spin_unlock(&r->wlock);
    lp_spill_file *f = lp_spill_new(r);
    lp_spin_lock(&r->wlock);
    if (!r->shared) r->shared = f; /* a second one made meanwhile stays in r->files */
  }
  lp_spill_file *f = r->shared;
  lp_spin_unlock(&r->wlock);
  return f;
}

int lp_report_spill(lp_report *r, lp_rnode *n, lp_record *rec) {
  if (atomic_load_explicit(&r->spill_failed, memory_order_relaxed)) return -1;
  lp_spill_file *f = writer(r);
  int64_t at;
  if (!f || lp_spill_put(r, f, rec, 0, &at) != 0) return -1;
  int64_t size = lp_spill_size(rec->len);
  /* The sequence's last item is its producer's alone: extend it when it
   * is this file's run of records and nothing was written after it. */
  lp_spilled *s = n->last && n->last->kind == LP_ITEM_SPILLED ? (lp_spilled *)n->last : NULL;
  if (s && s->file == f && s->off + atomic_load_explicit(&s->len, memory_order_relaxed) == at) {
    atomic_store_explicit(&s->len, atomic_load_explicit(&s->len, memory_order_relaxed) + size,
                          memory_order_release);
  } else {
    s = malloc(sizeof *s);
    if (!s) return -1; /* the record stays in memory: still delivered */
    s->item.kind = LP_ITEM_SPILLED;
    s->file = f;
    s->off = at;
    atomic_init(&s->len, size);
    s->done = 0;
    atomic_store_explicit(&s->item.next, NULL, memory_order_relaxed);
    if (n->last)
      atomic_store_explicit(&n->last->next, &s->item, memory_order_release);
    else
      atomic_store_explicit(&n->first, &s->item, memory_order_release);
    n->last = &s->item;
    lp_hold_count(r, (long long)sizeof *s + 16);
  }
  lp_hold_count(r, -lp_record_bytes(rec));
  atomic_fetch_add_explicit(&r->spilled, 1, memory_order_relaxed);
  free(rec);
  return 0;
}

long lp_report_read_spilled(lp_report *r, lp_spilled *s, int64_t len, int deliver, lp_sink_fn sink,
                            void *ud) {
  int64_t avail = atomic_load_explicit(&s->file->flushed, memory_order_acquire);
  if (avail < s->off + len) { /* its writer has not written them out yet: the host does */
    lp_spill_flush(r, s->file);
    avail = atomic_load_explicit(&s->file->flushed, memory_order_acquire);
  }
  if (avail > s->off + len) avail = s->off + len;
  if (s->off + s->done >= avail) return 0;
  if (!r->rd) {
    r->rd = calloc(1, sizeof *r->rd);
    if (!r->rd || lp_spill_reader_init(r->rd, s->file, 0, 0, LP_SPILL_BUF) != 0) {
      free(r->rd);
      r->rd = NULL;
      lp_spill_fail(r, "cannot read back", ENOMEM);
      s->done = avail - s->off;
      return 0;
    }
  }
  lp_spill_reader *rd = r->rd;
  if (rd->f != s->file) rd->blen = 0; /* its buffer holds another file's bytes */
  rd->f = s->file;
  rd->off = s->off + s->done;
  rd->end = avail;
  long n = 0;
  lp_record *rec;
  while ((rec = lp_spill_next(r, rd, &r->scratch, &r->scap, NULL))) {
    if (sink) {
      sink(ud, rec);
      n++;
    } else if (r->order == LUAPOOL_ORDER_PRIORITY) {
      size_t size = sizeof *rec + rec->len + 1;
      lp_record *copy = malloc(size);
      if (copy) {
        memcpy(copy, rec, size);
        lp_hold_host(r, lp_record_bytes(copy));
        lp_runs_hold(r, copy);
      } else {
        lp_record_deliver(r, rec); /* out of memory: out of order rather than lost */
      }
    } else if (deliver) {
      lp_record_deliver(r, rec);
      n++;
      if (r->paused) break;
    }
  }
  s->done = rd->off - s->off;
  return n;
}

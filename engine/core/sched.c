/*
 * sched.c - per-worker queues with stealing, and parking idle workers.
 *
 * DESIGN. Each worker has one lp_wq. Its levels hold new tasks that any
 * worker may run; its inbox holds suspended tasks whose wait is over, which
 * only this worker may resume (a coroutine never leaves its Lua state). The
 * owner pushes and pops new tasks at the top of a level (LIFO: depth-first,
 * cache-warm); thieves take up to half of the bottom (the oldest tasks, in a
 * fork-join tree the largest). Tasks submitted by the host go to one
 * injection list. Every lp_wq field except `yielded` (owner-only) and
 * `parked` (the futex word) is guarded by the lp_wq's spinlock; the
 * injection lists (one per pool) by their own locks. A worker serves one
 * pool: it takes injected tasks of that pool and steals only from its workers. No lock is held
 * while Lua runs, and no two locks are held at once except a thief's victim lock followed, after
 * its release, by its own.
 *
 * Parking: a worker with nothing to do spins for a while (a wake on these
 * VMs costs ~28 us, a spin hand-off ~75 ns), then sets its `parked` word,
 * checks every source of work once more and sleeps on the futex. Producers
 * publish work, issue a full fence, then wake a parked worker only if no
 * worker is spinning; resumes always wake their owner. The fences on both
 * sides make a missed wake impossible.
 */
#include "sched.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "levels.h"
#include "spin.h"
#include "task.h"
#include "timer.h"

static void futex_wait(_Atomic unsigned *addr, unsigned val, double timeout) {
  struct timespec ts, *tp = NULL;
  if (timeout >= 0) {
    ts.tv_sec = (time_t)timeout;
    ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
    tp = &ts;
  }
  syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, val, tp, NULL, 0);
}

static void futex_wake(_Atomic unsigned *addr) {
  syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* ---- deques ---- */

static size_t dq_size(const lp_deque *d) { return d->top - d->bottom; }

static int dq_push(lp_deque *d, struct lp_task *t) {
  if (!d->buf || dq_size(d) > d->mask) {
    size_t cap = d->buf ? (d->mask + 1) * 2 : 64;
    struct lp_task **nb = malloc(cap * sizeof *nb);
    if (!nb) return -1;
    size_t n = dq_size(d);
    for (size_t i = 0; d->buf && i < n; i++) nb[i] = d->buf[(d->bottom + i) & d->mask];
    free(d->buf);
    d->buf = nb;
    d->mask = cap - 1;
    d->bottom = 0;
    d->top = n;
  }
  d->buf[d->top++ & d->mask] = t;
  return 0;
}

static struct lp_task *dq_pop_top(lp_deque *d) {
  if (d->top == d->bottom) return NULL;
  return d->buf[--d->top & d->mask];
}

static struct lp_task *dq_pop_bottom(lp_deque *d) {
  if (d->top == d->bottom) return NULL;
  return d->buf[d->bottom++ & d->mask];
}

/* ---- levels: one deque per distinct priority value ---- */

static lp_level *level_for(lp_wq *q, double prio) {
  return lp_level_for(q->levels, &q->nlevels, sizeof(lp_level), LP_SCHED_MAXLEVELS, prio);
}

/* Empty levels beyond the first few are dropped so the search for the best
 * non-empty level stays short. */
static void level_trim(lp_wq *q, int i) {
  if (q->nlevels <= 4 || dq_size(&q->levels[i].dq) != 0) return;
  free(q->levels[i].dq.buf);
  memmove(&q->levels[i], &q->levels[i + 1], (size_t)(q->nlevels - i - 1) * sizeof(lp_level));
  q->nlevels--;
}

/* Returns the tasks now in q's levels, or -1 when out of memory. */
static long level_push(lp_wq *q, struct lp_task *t, double prio) {
  lp_level *lv = level_for(q, prio);
  if (dq_push(&lv->dq, t) != 0) return -1;
  return atomic_fetch_add_explicit(&q->nready, 1, memory_order_relaxed) + 1;
}

static struct lp_task *level_pop(lp_wq *q, int from_bottom) {
  for (int i = 0; i < q->nlevels; i++) {
    lp_deque *d = &q->levels[i].dq;
    if (dq_size(d) == 0) continue;
    struct lp_task *t = from_bottom ? dq_pop_bottom(d) : dq_pop_top(d);
    atomic_fetch_sub_explicit(&q->nready, 1, memory_order_relaxed);
    level_trim(q, i);
    return t;
  }
  return NULL;
}

/* ---- lists linked through qnext ---- */

static void list_append(struct lp_task **head, struct lp_task **tail, struct lp_task *t) {
  t->qnext = NULL;
  if (*tail)
    (*tail)->qnext = t;
  else
    *head = t;
  *tail = t;
}

static struct lp_task *list_take(struct lp_task **head, struct lp_task **tail) {
  struct lp_task *t = *head;
  if (t) {
    *head = t->qnext;
    if (!*head) *tail = NULL;
    t->qnext = NULL;
  }
  return t;
}

/* ---- public ---- */

int lp_sched_init(lp_sched *s, int nworkers) {
  memset(s, 0, sizeof *s);
  s->n = nworkers;
  s->wq = calloc((size_t)nworkers, sizeof(lp_wq));
  if (!s->wq) return -1;
  s->npools = 1;
  s->inj = calloc(1, sizeof *s->inj);
  if (!s->inj) return -1;
  for (int i = 0; i < nworkers; i++) {
    s->wq[i].levels = calloc(LP_SCHED_MAXLEVELS, sizeof(lp_level));
    if (!s->wq[i].levels) return -1;
    s->wq[i].rng = 0x9e3779b9u * (unsigned)(i + 1);
  }
  return 0;
}

int lp_sched_set_pools(lp_sched *s, int npools, const int *pool_of) {
  lp_inj *inj = calloc((size_t)npools, sizeof *inj);
  if (!inj) return -1;
  free(s->inj);
  s->inj = inj;
  s->npools = npools;
  for (int i = 0; i < s->n; i++) s->wq[i].pool = pool_of[i];
  return 0;
}

void lp_sched_free(lp_sched *s) {
  free(s->inj);
  if (!s->wq) return;
  for (int i = 0; i < s->n; i++) {
    lp_wq *q = &s->wq[i];
    if (!q->levels) continue;
    for (int l = 0; l < q->nlevels; l++) free(q->levels[l].dq.buf);
    free(q->levels);
  }
  free(s->wq);
  memset(s, 0, sizeof *s);
}

/* Wakes one parked worker of the pool, unless one is already spinning and
 * will find the new work itself. (With several pools a spinner may serve
 * another pool: then a parked worker of this one is woken anyway.) */
static void notify_one(lp_sched *s, int pool) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&s->nparked) == 0 || (s->npools == 1 && atomic_load(&s->nspinning) > 0)) return;
  for (int i = 0; i < s->n; i++) {
    if (s->wq[i].pool == pool && atomic_load_explicit(&s->wq[i].parked, memory_order_relaxed) &&
        atomic_exchange(&s->wq[i].parked, 0)) {
      futex_wake(&s->wq[i].parked);
      return;
    }
  }
}

long lp_sched_push(lp_sched *s, int w, struct lp_task *t) {
  lp_wq *q = &s->wq[w];
  lp_spin_lock(&q->lock);
  long n = level_push(q, t, s->one_level ? 0 : t->priority);
  lp_spin_unlock(&q->lock);
  if (n > 0) notify_one(s, q->pool);
  return n;
}

static lp_inj *inj_of(lp_sched *s, int pool) {
  return &s->inj[pool >= 0 && pool < s->npools ? pool : 0];
}

long lp_sched_inject(lp_sched *s, struct lp_task *t) {
  int pool = t->pool; /* once queued, t may run and be freed at any moment */
  lp_inj *in = inj_of(s, pool);
  lp_spin_lock(&in->lock);
  list_append(&in->head, &in->tail, t);
  long n = atomic_fetch_add(&in->n, 1) + 1;
  lp_spin_unlock(&in->lock);
  notify_one(s, pool);
  return n;
}

void lp_sched_inject_list(lp_sched *s, struct lp_task *head, struct lp_task *tail, long n) {
  int pool = head->pool;
  lp_inj *in = inj_of(s, pool);
  lp_spin_lock(&in->lock);
  if (in->tail)
    in->tail->qnext = head;
  else
    in->head = head;
  in->tail = tail;
  atomic_fetch_add(&in->n, n);
  lp_spin_unlock(&in->lock);
  notify_one(s, pool);
  if (n > 1) notify_one(s, pool);
}

void lp_sched_resume(lp_sched *s, int owner, struct lp_task *t) {
  lp_wq *q = &s->wq[owner];
  lp_spin_lock(&q->lock);
  list_append(&q->inbox, &q->inbox_tail, t);
  atomic_fetch_add(&q->ninbox, 1);
  lp_spin_unlock(&q->lock);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&q->parked) && atomic_exchange(&q->parked, 0)) futex_wake(&q->parked);
}

void lp_sched_yielded(lp_sched *s, int w, struct lp_task *t) {
  lp_wq *q = &s->wq[w];
  list_append(&q->yielded, &q->yielded_tail, t);
}

#define INJ_BATCH 32

/* The oldest injected task; with many waiting, a share of the others
 * moves to w's own queue in the same step. */
static struct lp_task *take_injected(lp_sched *s, int w) {
  lp_inj *in = &s->inj[s->wq[w].pool];
  long avail = atomic_load_explicit(&in->n, memory_order_relaxed);
  if (avail == 0) return NULL;
  struct lp_task *got[INJ_BATCH];
  long want = avail / s->n;
  if (want < 1) want = 1;
  if (want > INJ_BATCH) want = INJ_BATCH;
  int n = 0;
  lp_spin_lock(&in->lock);
  while (n < want && (got[n] = list_take(&in->head, &in->tail))) n++;
  if (n) atomic_fetch_sub(&in->n, n);
  lp_spin_unlock(&in->lock);
  if (n > 1) {
    lp_wq *q = &s->wq[w];
    lp_spin_lock(&q->lock);
    for (int i = n - 1; i >= 1; i--)
      if (level_push(q, got[i], s->one_level ? 0 : got[i]->priority) < 0)
        list_append(&q->yielded, &q->yielded_tail, got[i]);
    lp_spin_unlock(&q->lock);
  }
  return n ? got[0] : NULL;
}

#define STEAL_MAX 32

static struct lp_task *steal(lp_sched *s, int w) {
  lp_wq *self = &s->wq[w];
  if (s->n < 2) return NULL;
  self->rng = self->rng * 1103515245u + 12345u;
  int start = (int)((self->rng >> 16) % (unsigned)s->n);
  for (int k = 0; k < s->n; k++) {
    int v = (start + k) % s->n;
    if (v == w || s->wq[v].pool != self->pool) continue;
    lp_wq *q = &s->wq[v];
    if (atomic_load_explicit(&q->nready, memory_order_relaxed) == 0) continue;
    struct lp_task *got[STEAL_MAX];
    int n = 0;
    lp_spin_lock(&q->lock);
    long avail = atomic_load_explicit(&q->nready, memory_order_relaxed);
    long want = (avail + 1) / 2;
    if (want > STEAL_MAX) want = STEAL_MAX;
    /* Take from one level only, the best, so priorities survive the move. */
    for (int i = 0; i < q->nlevels && n == 0; i++) {
      lp_deque *d = &q->levels[i].dq;
      while (n < want && dq_size(d) > 0) got[n++] = dq_pop_bottom(d);
      if (n) level_trim(q, i);
    }
    atomic_fetch_sub_explicit(&q->nready, n, memory_order_relaxed);
    lp_spin_unlock(&q->lock);
    if (n == 0) continue;
    if (n > 1) {
      lp_spin_lock(&self->lock);
      /* Keep the oldest to run now; the rest go on our own queue. If the
       * ring cannot grow, the owner-only yielded list still holds them. */
      for (int i = n - 1; i >= 1; i--)
        if (level_push(self, got[i], got[i]->priority) < 0)
          list_append(&self->yielded, &self->yielded_tail, got[i]);
      lp_spin_unlock(&self->lock);
      notify_one(s, self->pool);
    }
    return got[0];
  }
  return NULL;
}

static struct lp_task *take_inbox(lp_wq *q) {
  struct lp_task *t = NULL;
  if (atomic_load_explicit(&q->ninbox, memory_order_relaxed) > 0) {
    lp_spin_lock(&q->lock);
    t = list_take(&q->inbox, &q->inbox_tail);
    if (t) atomic_fetch_sub(&q->ninbox, 1);
    lp_spin_unlock(&q->lock);
  }
  return t;
}

struct lp_task *lp_sched_next_begun(lp_sched *s, int w) {
  lp_wq *q = &s->wq[w];
  struct lp_task *t = take_inbox(q);
  return t ? t : list_take(&q->yielded, &q->yielded_tail);
}

struct lp_task *lp_sched_next(lp_sched *s, int w) {
  lp_wq *q = &s->wq[w];
  struct lp_task *t = take_inbox(q);
  if (t) return t;
  /* Now and then let outside submissions and yielded tasks go first, so a
   * busy worker cannot starve them. */
  if (++q->picks % 61 == 0) {
    if ((t = take_injected(s, w))) return t;
    if ((t = list_take(&q->yielded, &q->yielded_tail))) return t;
  }
  if (atomic_load_explicit(&q->nready, memory_order_relaxed) > 0) {
    lp_spin_lock(&q->lock);
    t = level_pop(q, 0);
    lp_spin_unlock(&q->lock);
    if (t) return t;
  }
  if ((t = take_injected(s, w))) return t;
  if ((t = steal(s, w))) return t;
  return list_take(&q->yielded, &q->yielded_tail);
}

struct lp_task *lp_sched_take_child(lp_sched *s, int w, struct lp_task *parent,
                                    struct lp_task *want) {
  lp_wq *q = &s->wq[w];
  if (atomic_load_explicit(&q->nready, memory_order_relaxed) == 0) return NULL;
  struct lp_task *t = NULL;
  lp_spin_lock(&q->lock);
  for (int i = 0; i < q->nlevels; i++) {
    lp_deque *d = &q->levels[i].dq;
    if (dq_size(d) == 0) continue;
    struct lp_task *top = d->buf[(d->top - 1) & d->mask];
    if ((!want || top == want) && top->parent == parent && top->timeout == 0 && top->retries == 0 &&
        !top->co) {
      d->top--;
      atomic_fetch_sub_explicit(&q->nready, 1, memory_order_relaxed);
      level_trim(q, i);
      t = top;
    }
    break;
  }
  lp_spin_unlock(&q->lock);
  return t;
}

static int has_work(lp_sched *s, int w) {
  lp_wq *q = &s->wq[w];
  if (q->begun_only) return atomic_load(&q->ninbox) || q->yielded;
  if (atomic_load(&q->ninbox) || atomic_load(&q->nready) || q->yielded ||
      atomic_load(&s->inj[q->pool].n))
    return 1;
  for (int i = 0; i < s->n; i++)
    if (s->wq[i].pool == q->pool && atomic_load(&s->wq[i].nready)) return 1;
  return 0;
}

void lp_sched_park(lp_sched *s, int w, double timeout) {
  lp_wq *q = &s->wq[w];
  int idle = timeout < 0 || timeout >= LP_TIMER_FOREVER / 2;
  atomic_store(&q->parked, 1);
  atomic_fetch_add(&s->nparked, 1);
  if (idle) atomic_fetch_add(&s->nidle, 1);
  /* After `parked` is set: either lp_sched_wake_all sees it and wakes us,
   * or we see its alarm here and look again instead of sleeping. */
  unsigned long alarms = atomic_load(&s->alarms);
  int alarmed = alarms != q->alarms_seen;
  q->alarms_seen = alarms;
  if (!alarmed && !has_work(s, w) && !atomic_load(&s->stop)) futex_wait(&q->parked, 1, timeout);
  if (idle) { /* counted before this worker can take anything */
    atomic_fetch_add(&s->unparks, 1);
    atomic_fetch_sub(&s->nidle, 1);
  }
  atomic_store(&q->parked, 0);
  atomic_fetch_sub(&s->nparked, 1);
}

/* A worker takes a task only after its unpark is counted, and a task is
 * queued or handed back before the wake: so if `unparks` is the same after
 * the look as before, every worker was parked idle and stayed so, and the
 * queues were empty while they were. */
int lp_sched_stalled(lp_sched *s) {
  unsigned long u = atomic_load(&s->unparks);
  if (atomic_load(&s->nidle) != s->n) return 0;
  for (int p = 0; p < s->npools; p++)
    if (atomic_load(&s->inj[p].n)) return 0;
  for (int i = 0; i < s->n; i++)
    if (atomic_load(&s->wq[i].nready) || atomic_load(&s->wq[i].ninbox)) return 0;
  return atomic_load(&s->unparks) == u;
}

void lp_sched_spinning(lp_sched *s, int delta) { atomic_fetch_add(&s->nspinning, delta); }

void lp_sched_wake_all(lp_sched *s) {
  atomic_fetch_add(&s->alarms, 1);
  for (int i = 0; i < s->n; i++)
    if (atomic_exchange(&s->wq[i].parked, 0)) futex_wake(&s->wq[i].parked);
}

void lp_sched_stop(lp_sched *s) {
  atomic_store(&s->stop, 1);
  for (int i = 0; i < s->n; i++) {
    atomic_store(&s->wq[i].parked, 0);
    futex_wake(&s->wq[i].parked);
  }
}

int lp_sched_export(lp_sched *s, struct lp_task **out, int max) {
  int n = 0;
  while (n < max) {
    /* The fullest queue gives its oldest tasks: the largest pieces of a
     * fork-join tree, as a thief would take them. */
    lp_wq *q = NULL;
    long most = 1; /* a worker's last queued task stays: it is about to run it */
    for (int i = 0; i < s->n; i++) {
      long r = atomic_load_explicit(&s->wq[i].nready, memory_order_relaxed);
      if (r > most) most = r, q = &s->wq[i];
    }
    if (!q) break;
    int got = 0;
    lp_spin_lock(&q->lock);
    long want = (atomic_load_explicit(&q->nready, memory_order_relaxed) + 1) / 2;
    for (int i = 0; i < q->nlevels && got == 0; i++) {
      lp_deque *d = &q->levels[i].dq;
      while (got < want && n + got < max && dq_size(d) > 1) out[n + got++] = dq_pop_bottom(d);
      if (got) level_trim(q, i);
    }
    atomic_fetch_sub_explicit(&q->nready, got, memory_order_relaxed);
    lp_spin_unlock(&q->lock);
    if (!got) break;
    n += got;
  }
  return n;
}

long lp_sched_queued(lp_sched *s) {
  long n = 0;
  for (int p = 0; p < s->npools; p++) n += atomic_load(&s->inj[p].n);
  for (int i = 0; i < s->n; i++) n += atomic_load(&s->wq[i].nready);
  return n;
}

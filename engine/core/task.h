/*
 * task.h - task records: identity, completion counting, outcome, waiters.
 */
#ifndef LP_TASK_H
#define LP_TASK_H

#include <stdatomic.h>
#include <stdint.h>

#include <lua.h>

#include "freelist.h"
#include "pack.h"
#include "report.h"

struct luapool;
struct lp_task;

typedef enum lp_task_state {
  LP_TASK_QUEUED = 0, /* created, waiting for a worker */
  LP_TASK_RUNNING,    /* its coroutine exists on a worker (running or suspended) */
  LP_TASK_OK,         /* finished; result holds its packed return values */
  LP_TASK_FAILED,     /* finished; result holds the packed error message */
  LP_TASK_CANCELLED   /* finished without running to the end */
} lp_task_state;

/* Something that wants to hear when a task finishes. Linked into the task's
 * waiter list under the task's lock; fire() runs after the lock is released
 * and after the node has been unlinked, so it may free or reuse the node. */
typedef struct lp_waiter {
  struct lp_waiter *next;
  struct lp_waiter *prev;
  void (*fire)(struct lp_waiter *w, struct lp_task *done);
} lp_waiter;

/* What each worker keeps for making tasks: reusable task records and
 * report nodes (freelist.h), and a block of task ids. */
typedef struct lp_task_cache {
  lp_freelist tasks;
  lp_freelist nodes;
  uint64_t next_id; /* owner-only: ids are taken from the engine in blocks */
  uint64_t end_id;
  _Atomic uint64_t created;    /* tasks this thread made, and finished (owner-written, */
  _Atomic uint64_t finished;   /* relaxed: the host reads them for progress and stats) */
  long long held_delta;        /* owner-only: bytes of records counted, not yet published */
  struct lp_spill_file *spill; /* owner-only: where this thread's records go past the bound */
} lp_task_cache;

typedef struct lp_task {
  uint64_t id;
  lp_task_cache *home; /* where the record returns when freed; NULL: malloc'd */
  struct luapool *eng;
  struct lp_task *parent; /* alive while this task's subtree is pending */
  int fn;                 /* interned task function name */
  int depth;              /* root 0 */
  int pool;               /* index of the pool it runs in (engine.h), inherited */
  double priority;
  struct lp_task *qnext; /* intrusive link used by the scheduler's lists */

  _Atomic int refs;     /* 1 for the pending subtree + 1 per future + holders */
  _Atomic long pending; /* 1 while the body runs + 1 per unfinished child subtree,
                           plus LP_JOIN_FLAG while the body waits in join() */
  _Atomic int state;    /* lp_task_state */
  _Atomic int cancel;   /* cancellation asked; checked at start and resume */
  _Atomic int awaited;  /* somebody observed the outcome (get, ok) */
  _Atomic int lock;     /* spinlock guarding waiters and the outcome */
  lp_waiter *waiters;

  lp_buf args;     /* packed arguments; kept until the task finishes */
  lp_buf result;   /* packed results or error message, once finished */
  char *failnote;  /* a failed task's arguments, for the unawaited-failure report */
  double timeout;  /* seconds the task may take, from its start; 0: no limit */
  double deadline; /* lp_now() at which it times out, once started; 0: none */
  int retries;     /* runs left after a failure */

  /* Touched only by the worker that owns the task's coroutine. */
  int owner;               /* worker index, -1 before the task starts */
  lua_State *co;           /* the coroutine, while RUNNING */
  struct lp_task *co_base; /* the task that owns co: itself, unless run inline in a parent's */
  int co_slot;             /* its anchor slot in the owner's coroutine pool */
  int timer_slot;          /* index in the owner's timer heap, or -1 */
  _Atomic uint32_t armed;  /* 1 while the task waits for a wake */
  lp_waiter self_waiter;   /* the node get() links into a child's list */
  uint64_t cancel_epoch;   /* engine cancel epoch last checked */
  lp_rnode *rn;            /* its output sequence (tree and priority order) */

  int attempts;        /* runs of its body begun (or sent) so far */
  short retry_pending; /* failed: runs again once its subtree has ended */

  /* A task that runs away from the engine's threads (place.h). The core
   * reads `away` and `foreign`; the at_ fields belong to the place that
   * holds it. */
  short away;       /* 1 while a place (or the engine upstream) holds it; owner is its slot there */
  short foreign;    /* no task of this engine's tree: a place took it from another engine
                       to share the load; its outcome and records go back there */
  short at_started; /* the place has begun its body */
  short at_resent;  /* sent again after the process running it died before it began */
  short at_overtime; /* the process running it was killed: past its time limit */
  unsigned at_gen;   /* a foreign task: the generation of the connection it goes back to */

  lp_record *held; /* its subtree's records, kept while a retry could still come
                      (completion order, and foreign tasks); under `lock` */
  lp_record *held_tail;
  /* Inside a worker process: the exec of a task sent to it. In the engine:
   * the connection a foreign task goes back to. */
  void *at_ref;
} lp_task;

/* The cache of the calling thread (set by each worker), or NULL. */
extern _Thread_local lp_task_cache *lp_task_cache_self __attribute__((tls_model("initial-exec")));
void lp_task_cache_init(lp_task_cache *c);
/* Frees the records a cache holds (the engine is closing). */
void lp_task_cache_drain(lp_task_cache *c);

/* Creates a task with refs = 1 (the pending subtree) and pending = 1,
 * taking ownership of args (left empty). parent may be NULL (a root); a child
 * adds one to the parent's pending count. Returns NULL when out of memory
 * (args is freed then too). */
lp_task *lp_task_new(struct luapool *eng, lp_task *parent, int fn, double priority, lp_buf *args);
void lp_task_ref(lp_task *t);
void lp_task_unref(lp_task *t);

static inline int lp_task_finished(lp_task *t) {
  return atomic_load_explicit(&t->state, memory_order_acquire) >= LP_TASK_OK;
}

/* Records the outcome (taking ownership of result), fires the waiters and
 * counts the body as done for completion counting. */
void lp_task_finish(lp_task *t, lp_task_state state, lp_buf *result);
/* The one way an away task (place.h) finishes: lp_task_finish with the
 * result its place sent, copied from bytes, and the summary of its
 * arguments for a failure report. */
void lp_task_finish_away(lp_task *t, lp_task_state state, const char *res, size_t len,
                         const char *note, size_t notelen);

/* Completion order: keeps rec in t's held list unless t has finished (then
 * returns 0); lp_task_take_held empties the list. */
int lp_task_hold(lp_task *t, lp_record *rec);
lp_record *lp_task_take_held(lp_task *t);
/* Appends rec to t's held list whatever t's state, without the lock: for
 * a list only one thread touches (a task relayed between processes). */
void lp_task_keep(lp_task *t, lp_record *rec);
/* The note a failure that used up its retries carries, " (after N
 * attempts)", or "" for a task that ran once: written into buf (size n). */
const char *lp_task_attempts_note(const lp_task *t, char *buf, size_t n);

/* Links w into t's waiters unless t has already finished; returns 0 if
 * linked, 1 if t had finished (w untouched). */
int lp_task_watch(lp_task *t, lp_waiter *w);
/* Unlinks w if it is still linked (a wait that timed out); returns whether
 * it was (then w will not fire). */
int lp_task_unwatch(lp_task *t, lp_waiter *w);

/* Wake protocol. A task arms itself, checks its condition, and yields if
 * the condition is still unmet. Any waker disarms and, if it found the task
 * armed, hands it back to its owner. Returns 1 when the caller hands it. */
static inline void lp_task_arm(lp_task *t) { atomic_store(&t->armed, 1); }
static inline int lp_task_disarm(lp_task *t) { return atomic_exchange(&t->armed, 0) != 0; }
void lp_task_wake(lp_task *t);

/* join(): the body sets LP_JOIN_FLAG in its own `pending` together with a
 * reference on itself. Whoever clears the flag owns that reference: the
 * child whose completion brings the count to 1 (it wakes the body), or the
 * body itself when it stops waiting. Clearing and the last decrement are
 * one atomic step, so nobody touches a record that may already be freed. */
#define LP_JOIN_FLAG (1L << 62)
static inline long lp_task_pending(lp_task *t) { return atomic_load(&t->pending) & ~LP_JOIN_FLAG; }
/* Starts a join wait; returns 1 if the subtree is already complete. */
int lp_task_join_begin(lp_task *t);
/* Ends it; returns 1 if a child took the flag (its wake is on the way). */
int lp_task_join_end(lp_task *t);

/* A task handed to a place (place.h) is away and running there: its subtree
 * there counts as one more pending unit, released by lp_task_away_done when
 * the place says that subtree has ended; `again`: it runs once more (a
 * retry, or it never began), so its place in the report stays open. */
void lp_task_away_begin(lp_task *t);
void lp_task_away_done(lp_task *t, int again);

/* Retries, one rule wherever a task runs. A failed attempt of a task with
 * runs left that is not cancelled runs again: lp_task_retry returns 1 and
 * marks it retry_pending; it goes again once everything the failed
 * attempt spawned has ended. lp_task_retry_begin starts that next attempt
 * (`retries` counts down then): the failed attempt's records, its
 * subtree's included, are dropped (lp_report_retry). */
int lp_task_retry(lp_task *t);
void lp_task_retry_begin(lp_task *t);

/* True if t or one of its ancestors was cancelled. */
int lp_task_cancelled(lp_task *t);
/* Asks t and its subtree to stop; returns 1 if t had not finished. */
int lp_task_cancel(lp_task *t);

#endif

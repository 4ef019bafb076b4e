/*
 * sched.h - where runnable tasks wait: per-worker queues, stealing, parking.
 */
#ifndef LP_SCHED_H
#define LP_SCHED_H

#include <stdatomic.h>
#include <stddef.h>

struct lp_task;

#define LP_SCHED_MAXLEVELS 64

/* A ring of task pointers: the owner pushes and pops at the top (LIFO,
 * depth-first, cache-warm); thieves take from the bottom (the oldest, which
 * in a fork-join tree are the biggest pieces of work). */
typedef struct lp_deque {
  struct lp_task **buf;
  size_t mask; /* capacity - 1; capacity is a power of two */
  size_t bottom;
  size_t top;
} lp_deque;

typedef struct lp_level {
  double prio; /* first: lp_level_for (levels.h) reads it there */
  lp_deque dq;
} lp_level;

typedef struct lp_wq {
  _Atomic int lock; /* spinlock over everything but `yielded` and `parked` */
  lp_level *levels; /* ascending priority; lower runs first */
  int nlevels;
  struct lp_task *inbox; /* tasks handed back to this worker to resume (FIFO) */
  struct lp_task *inbox_tail;
  _Atomic long nready; /* tasks in levels, read without the lock by thieves */
  _Atomic long ninbox;
  struct lp_task *yielded; /* owner-only: tasks that called luapool.yield() */
  struct lp_task *yielded_tail;
  _Atomic unsigned parked;   /* futex word: 1 while the owner sleeps */
  int pool;                  /* the pool this worker serves: it steals only there */
  unsigned rng;              /* owner-only: victim choice */
  unsigned picks;            /* owner-only: fairness counter */
  int begun_only;            /* owner-only: takes only tasks it has begun (lp_sched_next_begun) */
  unsigned long alarms_seen; /* owner-only: the last lp_sched_wake_all it noticed */
  char pad[64];
} lp_wq;

/* Tasks queued from outside a pool's workers (FIFO), one list per pool. */
typedef struct lp_inj {
  _Atomic int lock;
  struct lp_task *head, *tail;
  _Atomic long n;
  char pad[64];
} lp_inj;

typedef struct lp_sched {
  int n;
  lp_wq *wq;
  int npools;
  lp_inj *inj;                   /* per pool */
  _Atomic int nparked;           /* workers asleep in lp_sched_park */
  _Atomic int nspinning;         /* workers looking for work before parking */
  _Atomic int nidle;             /* parked with no timer that will come: only a wake moves them */
  _Atomic unsigned long unparks; /* bumped by every return from an idle park */
  _Atomic int stop;              /* shutting down: parked workers return */
  _Atomic unsigned long alarms;  /* bumped by every lp_sched_wake_all */
  int one_level;                 /* inline mode: strict LIFO, priorities ignored */
} lp_sched;

int lp_sched_init(lp_sched *s, int nworkers);
/* Splits the workers into pools: worker i serves pool_of[i]. Tasks go to
 * the pool named by their `pool` field; workers never run another pool's. */
int lp_sched_set_pools(lp_sched *s, int npools, const int *pool_of);
void lp_sched_free(lp_sched *s);

/* Queues a new task on worker w's own queue (w is the calling worker).
 * Returns how many tasks that queue holds now (what spawn.c bounds), or -1
 * when out of memory. */
long lp_sched_push(lp_sched *s, int w, struct lp_task *t);
/* Queues a task for its pool from outside that pool's workers. Returns how
 * many tasks wait in that pool's injection list now. */
long lp_sched_inject(lp_sched *s, struct lp_task *t);
/* Queues n tasks linked through qnext, from outside the workers. */
void lp_sched_inject_list(lp_sched *s, struct lp_task *head, struct lp_task *tail, long n);
/* Hands a suspended task back to its owner, from any thread. */
void lp_sched_resume(lp_sched *s, int owner, struct lp_task *t);
/* The calling worker's own luapool.yield(): run t again after others. */
void lp_sched_yielded(lp_sched *s, int w, struct lp_task *t);

/* Takes the newest task of worker w's own queue if it is a child of
 * `parent` that may run inline (no time limit, no retries) and, unless
 * `want` is NULL, is `want`; else NULL. */
struct lp_task *lp_sched_take_child(lp_sched *s, int w, struct lp_task *parent,
                                    struct lp_task *want);

/* The next task for worker w: resumed tasks first, then its own queue
 * (lowest priority value, newest first), then yielded, injected and stolen
 * tasks. NULL if there is nothing anywhere. */
struct lp_task *lp_sched_next(lp_sched *s, int w);
/* Only a task w has begun already (woken, or yielded): while its tasks
 * wait for room for their records, w starts no new ones (hold.c). */
struct lp_task *lp_sched_next_begun(lp_sched *s, int w);
/* Whether w takes only those for now: then new tasks waiting in the
 * queues do not keep it from parking. */
static inline void lp_sched_begun_only(lp_sched *s, int w, int on) { s->wq[w].begun_only = on; }

/* Sleeps until work may have arrived for w, or until `timeout` seconds
 * (negative: no limit), or lp_sched_stop. */
void lp_sched_park(lp_sched *s, int w, double timeout);
/* Whether every worker is parked with no timer to come and nothing is
 * queued anywhere: then only a thread outside the workers can make
 * progress (see lp_pool_stalled). Any thread. */
int lp_sched_stalled(lp_sched *s);
/* Counts the caller as spinning (looking for work) or not. */
void lp_sched_spinning(lp_sched *s, int delta);
/* Wakes every parked worker (a cancel: they must look at their timers),
 * and makes the next park of a worker that is about to sleep return at once:
 * a worker between its last look at the timers and its park would miss it. */
void lp_sched_wake_all(lp_sched *s);
/* Wakes every worker for shutdown. */
void lp_sched_stop(lp_sched *s);

/* Tasks waiting in every queue (an estimate while workers run). */
long lp_sched_queued(lp_sched *s);
/* Any thread: takes up to max tasks that wait in the workers' queues and
 * have not begun (the oldest of the fullest queues first, never a queue's
 * last), for another process to run. Returns how many. */
int lp_sched_export(lp_sched *s, struct lp_task **out, int max);

#endif

/*
 * link.h - a worker process's link to the engine: the state its files
 * share (internal to engine/procs/). procworker.c starts the process and
 * runs the link's loop on its main thread; link_in.c handles the frames
 * the engine sends; link_up.c is the engine's uplink (core/place.h), the
 * hooks the worker threads call and the frames that go up to the engine.
 *
 * Worker threads never write to the pipe. They hand roots over on three
 * stacks (begun, ended, subtree ended; one CAS each) and kick the link
 * awake only when it sleeps; the link alone frees and reuses an exec.
 */
#ifndef LP_LINK_H
#define LP_LINK_H

#include "engine.h"
#include "idmap.h"
#include "report.h"
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

/* link_up.c: the uplink, and frames to the engine. */
extern const lp_uplink_ops lp_link_ops;
/* Fires when a root's body has ended (its exec's waiter, worker threads). */
void lp_link_exec_finished(lp_waiter *w, lp_task *t);
/* The engine's answer to counter request `id`: wakes the task waiting. */
void lp_link_reply(lp_link *k, uint64_t id, int64_t value);
/* Appends a frame with one number (READY, WANT, STARTED, DONE) to wbuf. */
void lp_link_put_id(lp_link *k, int type, uint64_t v);
void lp_link_forward(lp_link *k);

/* link_in.c: frames from the engine. */
int lp_link_read_frames(lp_link *k);

#endif

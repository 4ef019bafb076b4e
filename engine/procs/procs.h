/*
 * procs.h - worker processes, the engine's side: the state its files share
 * (internal to engine/procs/).
 *
 * DESIGN. With --processes N the engine keeps task records, completion
 * counting and the report exactly as with threads; only the bodies run
 * elsewhere. The script's root tasks run on one engine thread; every task
 * they spawn goes to a queue (lowest priority first, then oldest) from
 * which N feeders, one per process, send batches as the process asks for
 * them (WANT). A task sent counts one more pending unit for its remote
 * subtree; the process runs it and everything it spawns, and reports back
 * per task: STARTED, its RECORDs, RESULT (the record's outcome, waiters
 * woken), DONE (the subtree has ended: the pending unit goes).
 *
 * The engine's side, a file per concept: procs.c is the place (what the
 * core calls: take, cancel, figures, start and stop); feeder.c the thread
 * per process that sends it tasks and frames; reader.c the thread per
 * process that reads what it reports; relay.c the tasks a process hands
 * over to run in another; process.c a process's start and its end. The
 * process's own side is procworker.c and its link (link.h).
 *
 * Threads: each connection (a process slot) has a feeder, which alone
 * writes frames to its socket, and a reader, which alone reads it and
 * replaces the process when it dies; the engine's threads reach the place
 * through procs.c. One mutex (`lock`) guards the queue and the
 * connections' state; each connection's `wlock` orders writes against
 * replacement of the process, and its `mlock` guards the tasks it holds.
 * Where they nest: wlock, then lock, then mlock. Task callbacks (finish,
 * wake) run with none held.
 */
#ifndef LP_PROCS_H
#define LP_PROCS_H

#include <sys/types.h>

#include "engine.h"
#include "idmap.h"
#include "sendq.h"
#include "wire.h"

/* What the processes of a slot counted (their STATS frames). */
typedef struct lp_tstat {
  uint64_t run;
  double busy;
} lp_tstat;

typedef struct lp_rstats {
  uint64_t made, fin, run, failed, retried; /* made, fin: subtasks made there */
  long queued, running;
  int depth;
  double cpu;
  lp_tstat *threads; /* one per worker thread of the process */
} lp_rstats;

typedef struct lp_conn {
  struct lp_procs *ps;
  int slot;
  pid_t pid;
  int fd;          /* the engine's end of the socket pair */
  unsigned gen;    /* bumped when the process is replaced */
  int ready;       /* READY seen: it has loaded the script */
  int gone;        /* no process could be started here */
  int early;       /* processes in a row that died before they were ready */
  double asked_at; /* when it was last asked to share its queued tasks */
  int relay_pick;  /* its feeder is to send the tasks handed over */
  /* Tasks its last process had not begun when it died: its replacement
   * takes them first, before other work (linked through qnext). One may
   * have killed that process: a process with tasks waiting in it must not
   * take it. */
  lp_task *resend;
  long nresend;
  long credits; /* tasks it asked for and has not been sent */
  lp_buf out;   /* frames other than EXEC waiting for the feeder */
  int waiting;  /* the feeder sleeps on cond */
  pthread_cond_t cond;
  pthread_mutex_t wlock;
  pthread_t reader, feeder;
  int threads_started;
  pthread_mutex_t mlock; /* guards `tasks` */
  lp_idmap tasks;        /* sent to this process and not DONE */
  char *loaderr;         /* why it could not load or start, whole (malloc'd) */
  /* Under the pool's lock: what the running process said of itself last,
   * and what the processes before it in this slot counted in all. */
  lp_rstats now, before;
} lp_conn;

typedef struct lp_procs {
  lp_place base; /* first: the pool's place (place.h) */
  luapool *eng;
  int pool; /* its index in eng->pools */
  int n;
  lp_conn *conns;
  pthread_mutex_t lock;
  pthread_cond_t ready_cond;
  lp_sendq queue;  /* tasks not yet sent */
  lp_task *room;   /* spawners held back by a flood (place_hold), linked by qnext */
  long room_below; /* they are woken once the queue is this short */
  /* Tasks a process handed over, not yet sent. They go to the first
   * process whose feeder looks, asked for or not: a process whose own
   * tasks all wait for them may never ask again. */
  lp_sendq relays;
  _Atomic int closing; /* read by the readers without the lock */
  int stopping;
  char lost[600]; /* why no process is left, once none is */
  int threads;    /* worker threads in each process */
  int first_proc; /* worker processes in the pools before this one */
  /* Decisions of the engine's own about tasks in processes: runs given
   * another go, failures for good, failures a process counted that the
   * engine turned into a retry. */
  _Atomic uint64_t retried, failed, unfailed;
  /* Tasks taken (queued, in a process, or waiting to go again) and not yet
   * over. Lowered only after a task's ending has woken its waiters, so
   * that 0 here and nothing to do on the engine's threads is a deadlock
   * (place_idle). */
  _Atomic long held;
  char exe[4096];
} lp_procs;

/* The processes of t's pool: a task comes here only through its pool's
 * place, which is this pool's lp_procs. */
static inline lp_procs *procs_of(luapool *eng, int pool) {
  return (lp_procs *)eng->pools[pool].place;
}

/* Under lock: wakes the feeder of c if it sleeps. */
static inline void poke(lp_conn *c) {
  if (c->waiting) {
    c->waiting = 0; /* signalled: the next wake goes to another feeder */
    pthread_cond_signal(&c->cond);
  }
}

/* procs.c: the place. */
/* Queues t to be sent (at the front: it goes again), or finishes it at
 * once when the run stops or t is cancelled: how many wait to be sent in
 * its queue, or -1 (no memory). */
int lp_procs_push(luapool *eng, lp_task *t, int front);
/* Under lock: the spawners held back by a flood, when the queue has
 * drained far enough (or `all`); lp_procs_room_wake wakes them after the
 * lock is let go. */
lp_task *lp_procs_room_take(lp_procs *ps, int all);
void lp_procs_room_wake(lp_task *list);
/* A task comes to the pool, from the engine or handed over by a process. */
int lp_procs_take(luapool *eng, lp_task *t);
/* The run is cancelled, or no process is left: what is not sent ends. */
void lp_procs_cancel_pool(luapool *eng, lp_procs *ps);

/* feeder.c: the thread that sends a process its tasks and frames. */
void *lp_feeder_main(void *arg);                            /* arg: its lp_conn */
void lp_feeder_poke_best(lp_procs *ps);                     /* under lock */
void lp_feeder_poke_for_relay(lp_procs *ps, lp_conn *from); /* under lock */
void lp_feeder_ask_to_share(lp_procs *ps, lp_conn *c);      /* under lock */
/* Appends a CANCEL frame for task `id` to b. */
void lp_feeder_put_cancel(lp_buf *b, uint64_t id);

/* reader.c: the thread that reads what a process reports. */
void *lp_reader_main(void *arg); /* arg: its lp_conn */
void lp_reader_subtree_over(lp_procs *ps, lp_task *t);

/* relay.c: tasks a process handed over, relayed back to it. */
/* RESULT and RECORD frames about relay task t, to the process it came from. */
void lp_relay_result(lp_task *t, int state, const char *res, size_t len, const char *note,
                     size_t notelen);
void lp_relay_record(lp_task *t, luapool *eng, const lp_record *r);
void lp_relay_done(lp_task *t, int sent);
void lp_relay_finish_with(lp_task *t, lp_task_state state, const char *text);
void lp_relay_export(lp_conn *c, lp_wire_msg *m);
void lp_relay_cancel_export(lp_procs *ps, uint64_t id);

/* process.c: a process's start and its end. */
int lp_process_spawn(lp_procs *ps, lp_conn *c); /* under wlock and lock */
void lp_process_died(lp_conn *c, const char *why);

#endif

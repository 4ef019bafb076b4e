/*
 * worker.h - `luapool worker --broker URL` (internal to engine/broker/):
 * the state its files share. worker.c is the worker's loop (the runs it
 * serves, the reads from their streams, leases, heartbeats, leaving);
 * wslot.c is one worker process of a run and the frames it exchanges.
 *
 * DESIGN. A worker is a bridge between Redis and worker processes: each
 * run it serves gets its own processes (the run's script, order and limits,
 * exactly as `--processes` would start them), which speak the wire of
 * engine/procs/. A task read from a run's stream becomes an EXEC; the
 * process's RECORDs, RESULT and DONE for it become its outcome, committed
 * in one call of lp_commit with the task's fence (functions.lua). A
 * subtask runs in the process that spawned it; when another worker is idle
 * (the run's `hungry` key), the process is asked to hand over tasks that
 * wait (HUNGRY), and what it hands over (EXPORT) goes to the run's stream,
 * its outcome coming back through this worker's inbox to the process.
 *
 * One thread (the loop) owns everything here; a second (the reader) blocks
 * on the streams and hands what it read to the loop.
 */
#ifndef LP_BROKER_WORKER_H
#define LP_BROKER_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "broker.h"

struct redisReply;

/* A task from a run's stream, at one of the run's processes. */
typedef struct lp_wexec {
  struct lp_wexec *next; /* the slot's list */
  uint64_t id;           /* its id at the process */
  char msgid[32];        /* its entry in the stream */
  char fence[16];        /* its delivery count when this worker got it */
  char *key, *owner;     /* its key, and whose inbox hears its end */
  char *x;               /* the task's bytes, to run it again */
  size_t xlen;
  int retries; /* runs left after a failure */
  int started; /* its body began */
  int lost;    /* the lease went to another worker: no commit */
  int again;   /* failed with runs left: runs again once DONE comes */
  int failed;
  lp_buf out;    /* its outcome so far: the records of its subtree */
  lp_buf result; /* its RESULT frame, which goes after them */
} lp_wexec;

/* A task this worker's processes handed over, until its end comes back. */
typedef struct lp_wexport {
  struct lp_wexport *next;
  char *key;
  struct lp_wslot *slot;
  unsigned gen; /* the slot's process it goes back to */
  uint64_t id;
} lp_wexport;

struct lp_wrun;

typedef struct lp_wslot {
  struct lp_wrun *run;
  int index;
  pid_t pid;
  int fd;
  unsigned gen;
  int ready;
  long credits;       /* tasks it asked for, not yet sent */
  long queued;        /* its tasks waiting, by its last STATS */
  long running;       /* and running */
  uint64_t ran;       /* bodies run, by its last STATS */
  uint64_t failed;    /* tasks failed, by its last STATS */
  uint64_t made, fin; /* subtasks made and finished, by its last STATS */
  double asked_at;    /* when it was last asked to hand over */
  lp_buf rbuf, wbuf;
  size_t wpos;
  lp_wexec *execs;
  long nexecs;
} lp_wslot;

typedef struct lp_commit lp_commit;

typedef struct lp_wrun {
  struct lp_wrun *next;
  lp_runkeys k;
  char inbox[192];
  char *script, *chunkname;
  size_t script_len;
  int order, retries;
  double timeout, lease;
  uint64_t memory_limit;
  lp_wslot *slots;
  int nslots;
  int over;         /* not running any more: its processes are ending */
  uint64_t next_id; /* for the tasks sent to its processes */
  lp_wexport *exports;
  double renewed, claimed, hungry_seen;
  /* By its processes since its last counts (lp:{RUN}:n): bodies run,
   * tasks failed, subtasks made and finished. */
  uint64_t ran, failed, made, fin;
} lp_wrun;

typedef struct lp_worker {
  lp_broker_url url;
  lp_redis r;  /* the loop's connection */
  lp_redis rd; /* the reader's */
  char name[96];
  char wake[128]; /* lp:wake:NAME: a submitter says a run began or is ending */
  int look_now;
  char only[LP_RUN_ID_LEN + 1]; /* --run: this run alone, then leave */
  int processes, threads;
  double lease;
  char exe[4096];
  lp_wrun *runs;
  uint64_t *over; /* runs seen over, by id: never looked at again (0: empty) */
  size_t over_cap, over_n;
  uint64_t ran;
  lp_commit *commits, **commits_tail; /* outcomes for the next pipeline */
  /* Commands whose replies nobody needs (commits, exports, acks), in the
   * protocol's bytes: they go in the loop's pipeline, and stay until their
   * replies are in, so a connection lost meanwhile loses none of them
   * (sent twice, each is harmless: lp_commit and task keys see to it). */
  struct lp_sent *sent, **sent_tail;
  double retry_at, backoff; /* reconnecting: when next, and the pause */
  int lost;                 /* the connection was lost and is not back */
  /* Between the loop and the reader. */
  pthread_mutex_t lock;
  struct redisReply *got; /* what the reader read, for the loop */
  int wake_fd;            /* the reader writes it when `got` is set */
  char streams[64][192];  /* what the reader reads: streams, then ids */
  char reading[64][192];  /* the reader's own copy */
  int nstreams, nwant;    /* streams, and how many of the first are runs' queues */
  int reader_nwant;       /* nwant when the reader's current read was made */
  long count;
  _Atomic long long reader_id; /* its connection's CLIENT ID, for CLIENT UNBLOCK */
  int reader_blocked;
  int reread; /* the reader reconnected: re-read the inboxes' pending entries */
  volatile int stopping;
  int ended; /* the reader has left */
} lp_worker;

/* wslot.c */
int lp_wslot_start(lp_worker *w, lp_wslot *s);
void lp_wslot_end(lp_worker *w, lp_wslot *s);
/* Sends entry (id, fields) of the run's stream with its fence to slot s. */
int lp_wslot_exec(lp_worker *w, lp_wslot *s, const char *msgid, const char *fence,
                  struct redisReply *fields);
/* Reads and handles what s's process sent: 0, or -1 when it has ended. */
int lp_wslot_read(lp_worker *w, lp_wslot *s);
int lp_wslot_flush(lp_wslot *s);
/* The end of a task this worker handed over comes back. */
void lp_wslot_relay(lp_worker *w, lp_wrun *run, const char *key, const char *out, size_t len);
/* Drops an exec (lost, or committed). */
void lp_wexec_free(lp_wexec *x);

/* worker.c: a committed outcome, queued for the loop's next pipeline. */
void lp_worker_commit(lp_worker *w, lp_wslot *s, lp_wexec *x);
/* A command whose reply nobody needs: it goes with the loop's next
 * pipeline (a reply that is an error is said on stderr). */
void lp_worker_send(lp_worker *w, int argc, const char **argv, const size_t *lens);
/* The same for a command a run cannot do without (a commit, an export):
 * refused by a full broker, it fails the run. */
void lp_worker_send_for(lp_worker *w, const lp_wrun *run, int argc, const char **argv,
                        const size_t *lens);
/* Opens the loop's connection again after a loss (with a growing pause
 * between tries): 0 once it is open. */
int lp_worker_reconnect(lp_worker *w);
/* wsend.c: sends what waits and reads the replies (what got no reply stays);
 * the outcomes queued, with the runs' counts ahead of them, then that; the
 * counts of one run; the outcomes queued for a run that is going. */
void lp_worker_drain(lp_worker *w);
void lp_worker_flush(lp_worker *w);
void lp_worker_count_run(lp_worker *w, lp_wrun *run);
void lp_worker_drop_commits(lp_worker *w, const lp_wrun *run);
/* Frees what waits to be sent (the worker is leaving). */
void lp_worker_drop_sent(lp_worker *w);

/* wread.c: the reader thread; what it reads next (set by the loop each
 * turn); what it read, handed out by the loop; the run's process with the
 * most room. */
void *lp_worker_reader(void *arg);
void lp_worker_set_streams(lp_worker *w);
void lp_worker_take_read(lp_worker *w, struct redisReply *r);
lp_wslot *lp_wrun_freest(lp_wrun *run);

#endif

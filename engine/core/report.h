/*
 * report.h - records made by tasks, and the order in which the host gets them.
 */
#ifndef LP_REPORT_H
#define LP_REPORT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

struct luapool;
struct lp_task;

enum { LP_ITEM_RECORD = 0, LP_ITEM_CHILD = 1, LP_ITEM_SPILLED = 2 };

/* One entry of an output sequence: a record, or the place of a child task.
 * Sequences have one producer (the task's own worker) and one consumer
 * (the host), so `next` is published with release order and read with
 * acquire order and needs no lock. */
typedef struct lp_item {
  _Atomic(struct lp_item *) next;
  int kind;
} lp_item;

/* A task's output sequence, in the order a sequential run would make it:
 * its records, and at each spawn the place of the child. A node of its own
 * rather than part of the task record, so a finished task is freed at once
 * and only these small nodes wait for the cursor. */
typedef struct lp_rnode {
  lp_item item;             /* this task's place in its parent's sequence */
  _Atomic(lp_item *) first; /* the sequence */
  lp_item *last;            /* producer-only */
  _Atomic int done;         /* the body has finished: the sequence is complete */
  int held;                 /* an attempt of a task that may still run again: not yet linked
                               into its place (parent), which stays empty until the outcome */
  struct lp_rnode *parent;  /* NULL for roots */
  struct lp_freelist *home; /* where the node returns when the cursor frees it */
} lp_rnode;

typedef struct lp_record {
  lp_item item;
  int kind; /* LUAPOOL_RECORD_* */
  uint64_t task;
  uint64_t root; /* with an uplink (place.h): the root here that this descends from */
  int fn;
  double priority;
  int held;    /* host-only: kept for priority order, freed after it */
  int spilled; /* host-only: read back from a spill file (counted once) */
  size_t len;
  char data[]; /* packed value (EMIT) or text (PRINT) */
} lp_record;

/* Records of one sequence written to a spill file (spill.h) in a row: they
 * take one item's place. Its producer adds to it while it is the last item
 * of the sequence; once another item follows, or the sequence is done, it
 * is whole. The host reads it as far as the file has been written. */
typedef struct lp_spilled {
  lp_item item;
  struct lp_spill_file *file;
  int64_t off;         /* where its first record is in the file */
  _Atomic int64_t len; /* bytes of its records so far */
  int64_t done;        /* host-only: bytes already handed on */
} lp_spilled;

/* A sorted run of priority order's held records in the host's spill file. */
typedef struct lp_run {
  int64_t off, end;
} lp_run;

/* A record held for priority order, with its place in tree order. */
typedef struct lp_held {
  lp_record *rec;
  size_t rank;
} lp_held;

/* A failure report waiting for the host thread. */
typedef struct lp_failure {
  struct lp_failure *next;
  char text[];
} lp_failure;

/* A cursor over one subtree of sequences (an uplink walks the subtree of
 * each root it was sent, and forwards the records). */
typedef struct lp_cursor {
  lp_rnode *top; /* the subtree's own sequence */
  lp_rnode *cur;
  lp_item *pos;
} lp_cursor;

/* Where a subtree walk hands its records; the walk frees them after. */
typedef void (*lp_sink_fn)(void *ud, const lp_record *rec);

typedef struct lp_report {
  struct luapool *eng;
  int order;
  /* Tree order: the host's cursor over the tree of sequences. */
  lp_rnode roots; /* the sequence of root tasks, produced by the host */
  lp_rnode *cur;  /* the sequence the cursor is in */
  lp_item *pos;   /* last item consumed there; NULL: none yet */
  /* Completion order: one queue in the order records are made, any number
   * of producers (an exchange on `ctail` orders them), the host consuming. */
  lp_item csentinel;
  lp_item *cpos; /* host-only: the last record consumed (or &csentinel) */
  int noutbox;   /* workers: the homes of report nodes */
  /* Exchanged by every producer per record: a cache line of its own, so
   * neither the host's per-record writes nor reads of the fields around
   * it share its misses (padding, not alignment: the engine is calloc'd). */
  char pad_ctail[64];
  _Atomic(lp_item *) ctail;
  char pad_ctail_end[64];
  /* Failures of unawaited tasks, from any thread. */
  pthread_mutex_t fail_lock;
  lp_failure *fail_head, *fail_tail;
  uint64_t delivered;
  struct lp_held *held; /* priority order: records waiting for the end of the run */
  size_t nheld, capheld;
  struct lp_freelist **freed_home; /* host-only: nodes freed, batched per home list */
  void **freed_first;
  void **freed_last;
  int *nfreed;
  /* The memory bound of held records (hold.c, spill.c, runs.c). Producers
   * count what they add and the host what it frees, each publishing into
   * `mem` every LP_HOLD_BATCH bytes; past `bound`, records that wait for
   * their turn go to disk and a task whose record waits for the output
   * waits for room (lp_hold_wait). */
  /* Read by every producer per record, written once per batch: a line
   * of their own (padding, not alignment: the engine is calloc'd), away
   * from what the host writes per record. */
  char pad_bound[64];
  long long bound;
  _Atomic int holding; /* a task with retries exists: completion order looks for holders */
  _Atomic long long mem;
  _Atomic long long floor; /* mem when the host last caught up: records waiting for their turn */
  _Atomic(lp_rnode *) cursor_seq; /* the sequence the host's cursor is in */
  char pad_after[64];
  _Atomic long long peak;
  long long host_delta;     /* host-only: freed, not yet published */
  _Atomic int wlock;        /* spinlock over `waiting` */
  struct lp_task **waiting; /* tasks waiting for room */
  size_t nwaiting, capwaiting;
  _Atomic int nwaiting_pub;  /* nwaiting, readable without the lock */
  pthread_mutex_t room_lock; /* threads that cannot suspend wait here (lp_hold_block) */
  pthread_cond_t room_cond;
  uint64_t room_passes; /* under room_lock: bumped by lp_hold_wake */
  _Atomic int nblocked;
  _Atomic uint64_t spilled; /* records written to disk */
  _Atomic int spill_failed;
  char *spill_error;            /* the first failure, under fail_lock */
  struct lp_spill_file *files;  /* every spill file, under fail_lock */
  struct lp_spill_file *shared; /* of threads without a worker cache, under its lock */
  struct lp_spill_reader *rd;   /* host-only: reads spilled records back */
  lp_record *scratch;           /* host-only: the record read back */
  size_t scap;
  struct lp_spill_file *runfile; /* priority order's sorted runs (host-only) */
  lp_run *runs;
  size_t nruns, capruns;
  uint64_t rank;       /* priority order: records held so far */
  long long heldbytes; /* bytes in `held` */
  int paused;          /* host-only: the consumer has enough for now (lp_report_pause) */
  int closing;         /* host-only: lp_report_free walks to free, reading nothing back */
  lua_State *fmt;      /* host-only state that turns values into text and JSON */
  char *textbuf;
  size_t textcap;
} lp_report;

int lp_report_init(lp_report *r, struct luapool *eng, int order, int nworkers);
/* Frees every record not yet delivered and the references the tree held. */
void lp_report_free(lp_report *r);

/* Producer side, called by the worker running task t. Returns 1 when the
 * records in memory are past the bound and rec waits for the output (not
 * for its turn): the task should wait for room (lp_hold_wait) if it can. */
int lp_report_add(lp_report *r, struct lp_task *t, lp_record *rec);
void lp_report_spawn(lp_report *r, struct lp_task *parent, struct lp_task *child);
/* t's outcome is final (its body has finished for good): its records may
 * leave, and (unless t is away: place.h) its sequence is complete. */
void lp_report_body_done(lp_report *r, struct lp_task *t);
/* Retries. A task that may still run again keeps the records of its
 * current attempt, and of the subtree made during it, until its outcome is
 * known (lp_report_body_done). A failed attempt whose subtree is over:
 * lp_report_retry drops its records and opens the next attempt. In
 * completion order the records wait in the task's `held` list (task.c),
 * lp_report_release hands them on, under the task's lock. */
void lp_report_retry(lp_report *r, struct lp_task *t);
void lp_report_release(lp_report *r, struct lp_task *t, lp_record *held);
/* Called by the host when it submits a root. */
void lp_report_root(lp_report *r, struct lp_task *root);
void lp_report_failure(lp_report *r, const char *text);

/* An uplink: gives a root it was sent a sequence of its own, walked by c. */
void lp_report_subroot(lp_report *r, struct lp_task *t, lp_cursor *c);
/* Hands every record of c's subtree that may leave now to sink; returns 1
 * once the whole subtree has been walked (its node is freed then). */
int lp_report_walk_sub(lp_report *r, lp_cursor *c, lp_sink_fn sink, void *ud);
/* Completion order: hands every record made so far to sink. Returns 1 when
 * it had every record made before the call, 0 while a producer has taken
 * its place in the queue but not yet linked it (the records after that
 * place wait for the next walk). */
int lp_report_walk_made(lp_report *r, lp_sink_fn sink, void *ud);
/* Returns the nodes the walks freed to their home lists. */
void lp_report_flush_nodes(lp_report *r);
/* An away task (place.h): its body has ended but records of its subtree
 * may still arrive; its sequence stays open until this, called when its
 * place says the subtree has ended (lp_task_away_done). */
void lp_report_away_done(lp_report *r, struct lp_task *t);

/* Host side, from inside on_record: ends the delivery pass after this
 * record (a consumer that buffers, such as the host module's records loop,
 * keeps to its share of the memory bound); the next pass goes on from
 * there. Priority order's end, the merge of its runs, is one pass. */
static inline void lp_report_pause(lp_report *r) { r->paused = 1; }
/* Host side: delivers every record that may leave now through the
 * configured callback; returns how many. With `final` set, the run is over
 * and everything left is delivered in order. */
long lp_report_deliver(lp_report *r, int final);

/* ---- the memory bound (hold.c) ---- */

#define LP_HOLD_BATCH (64LL * 1024)
#define LP_HOLD_DEFAULT ((size_t)32 << 20)

/* Counts d bytes of records made (> 0) or freed (< 0) by a producer
 * thread; returns the bytes in memory now, as far as it knows. */
long long lp_hold_count(lp_report *r, long long d);
/* Whether a task whose record waits for the output should wait for room,
 * with mem bytes in memory. */
int lp_hold_must_wait(lp_report *r, long long mem);
/* The same for the host (the thread that walks the cursor). */
void lp_hold_host(lp_report *r, long long d);
/* Publishes what the host has counted; keeps the peak. */
void lp_hold_publish(lp_report *r);
/* Queues t (armed: lp_task_arm) to be woken when the host has caught up. */
void lp_hold_wait(lp_report *r, struct lp_task *t);
/* Host: wakes every task waiting for room; the host has handed on what it
 * could, so the records still in memory wait for their turn, not for it. */
void lp_hold_wake(lp_report *r);
/* The same for a thread that is not a task (a process reader): blocks
 * until the host's next wake, 50 ms at most. */
void lp_hold_block(lp_report *r);
/* The host has handed on all it could: publishes its count and wakes the
 * waiting (the end of a delivery pass, or of an uplink's forwarding). */
void lp_report_pass_end(lp_report *r);
/* Whether tasks wait for room (not a deadlock: the host wakes them). */
int lp_hold_waiting(lp_report *r);
/* Bytes a record takes in memory, as counted. */
long long lp_record_bytes(const lp_record *rec);

/* ---- spilled sequences (spill.c) ---- */

/* Writes rec into t's sequence n through the calling thread's spill file:
 * 0 (rec is freed), or -1 (rec stays the caller's). */
int lp_report_spill(lp_report *r, lp_rnode *n, lp_record *rec);
/* Host: hands on the records of s the file has so far, from where the
 * host left off; returns how many. */
long lp_report_read_spilled(lp_report *r, lp_spilled *s, int64_t len, int deliver, lp_sink_fn sink,
                            void *ud);

/* ---- priority order's runs (runs.c) ---- */

/* Host: keeps rec for the end of the run (rec is the report's now). */
void lp_runs_hold(lp_report *r, lp_record *rec);
/* Host: hands every held record to the host in priority order (or frees
 * them, without `deliver`); returns how many. */
long lp_runs_release(lp_report *r, int deliver);

/* A record (record.c). */
/* Makes a record; NULL when out of memory. */
lp_record *lp_record_new(int kind, const struct lp_task *t, double priority, const void *data,
                         size_t len);
/* Frees a list of records linked by item.next (a task's held records). */
void lp_record_free_list(lp_record *list);
/* Host side: hands rec to the on_record callback (counted as delivered). */
void lp_record_deliver(lp_report *r, lp_record *rec);
/* Host side: appends the values of a packed message to out as text, each as
 * a record's text, separated by tabs. 0, or -1 (out of memory, bad bytes). */
struct lp_buf;
int lp_record_text(lp_report *r, const char *p, size_t len, struct lp_buf *out);

#endif

/*
 * proc.c - worker processes, the engine's side.
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
 * Processes are started by executing the luapool binary in its worker
 * role, not by fork: the engine is multithreaded by then, and a child of a
 * multithreaded fork may only call async-signal-safe functions until it
 * execs. Exec gives every worker, the first ones and the replacements
 * alike, a clean state that loads the script from its source.
 *
 * A process that dies (a signal, an exit, a malformed frame) is replaced.
 * Of the tasks it had, those whose body had not begun go back on the queue
 * as they were; the others fail with what happened, or run again while
 * they have retries. Records of a task that may still be retried are kept
 * until its outcome is known, and a failed attempt's are dropped once its
 * subtree is over (report.c, as for threads), so each is reported once.
 *
 * One mutex (`lock`) guards the queue and the connections' state; each
 * connection's `wlock` orders writes against replacement of the process.
 * Task callbacks (finish, wake) run with neither held.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "idmap.h"
#include "pool.h"
#include "timer.h"
#include "proc.h"
#include "sendq.h"
#include "trace.h"
#include "wire.h"

extern char **environ;

#define SEND_BATCH 512 /* tasks per EXEC batch */
#define EARLY_DEATHS 3 /* deaths before READY in a row that give a slot up */

/* ---- state ---- */

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
  lp_sendq queue; /* tasks not yet sent */
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
static lp_procs *procs_of(luapool *eng, int pool) { return (lp_procs *)eng->pools[pool].place; }

/* Under lock: wakes the feeder of c if it sleeps. */
static void poke(lp_conn *c) {
  if (c->waiting) {
    c->waiting = 0; /* signalled: the next wake goes to another feeder */
    pthread_cond_signal(&c->cond);
  }
}

/* Under lock: wakes the sleeping feeder whose process has the most room. */
static void poke_best(lp_procs *ps) {
  lp_conn *best = NULL;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (c->credits > 0 && c->waiting && (!best || c->credits > best->credits)) best = c;
  }
  if (best) poke(best);
}

/* ---- tasks a process handed over (EXPORT), relayed back to it ---- */

/* Sends a frame about relay task t to the process that exported it, if
 * that process is still the one that did (a replaced one never knew it). */
static void relay(lp_task *t, lp_buf *frame, size_t mark) {
  lp_conn *a = t->at_ref;
  lp_wire_end(frame, mark);
  pthread_mutex_lock(&a->ps->lock);
  if (a->gen == t->at_gen && a->fd >= 0 && !a->ps->closing) {
    lp_buf_append(&a->out, frame->data, frame->len);
    poke(a);
  }
  pthread_mutex_unlock(&a->ps->lock);
  lp_buf_free(frame);
}

static void relay_result(lp_task *t, int state, const char *res, size_t len, const char *note,
                         size_t notelen) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  if (lp_wire_begin(&b, LP_MSG_RESULT, &mark) || lp_wire_u64(&b, t->id) ||
      lp_wire_u64(&b, (uint64_t)state) || lp_wire_u64(&b, 0) || lp_wire_bytes(&b, res, len) ||
      lp_wire_bytes(&b, note, notelen)) {
    lp_buf_free(&b);
    return;
  }
  relay(t, &b, mark);
}

static void relay_record(lp_task *t, luapool *eng, const lp_record *r) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  const char *fn = lp_names_get(&eng->names, r->fn);
  if (lp_wire_begin(&b, LP_MSG_RECORD, &mark) || lp_wire_u64(&b, t->id) ||
      lp_wire_u64(&b, (uint64_t)r->kind) || lp_wire_u64(&b, r->task) ||
      lp_wire_bytes(&b, fn, strlen(fn)) || lp_wire_f64(&b, r->priority) ||
      lp_wire_bytes(&b, r->data, r->len)) {
    lp_buf_free(&b);
    return;
  }
  relay(t, &b, mark);
}

/* The relay task's subtree has ended: DONE to its process, and the engine
 * lets it go (it never was part of the engine's own tree). */
static void relay_done(lp_task *t, int sent) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  if (lp_wire_begin(&b, LP_MSG_DONE, &mark) == 0 && lp_wire_u64(&b, t->id) == 0)
    relay(t, &b, mark);
  else
    lp_buf_free(&b);
  t->away = 0;
  if (sent) lp_task_unref(t); /* the connection's */
  lp_task_unref(t);           /* its own */
}

/* Under lock: wakes a feeder for a task handed over by `from`: one whose
 * process asks for work, else any other, else from's own. */
static void poke_for_relay(lp_procs *ps, lp_conn *from) {
  lp_conn *pick = NULL;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (!c->ready || c->fd < 0) continue;
    if (!pick || (c != from && (pick == from || c->credits > pick->credits))) pick = c;
  }
  if (pick) {
    pick->relay_pick = 1;
    poke(pick);
  }
}

/* Finishes t with the message text as its error. */
static void finish_with(lp_task *t, lp_task_state state, const char *text) {
  lp_buf msg;
  lp_buf_init(&msg);
  if (lp_pack_begin(&msg, 1) != 0 || lp_pack_put_string(&msg, text, strlen(text)) != 0)
    lp_buf_reset(&msg);
  if (t->foreign) {
    const char *note = t->failnote ? t->failnote : "";
    relay_result(t, state, msg.data, msg.len, note, strlen(note));
    atomic_store(&t->state, (int)state);
  } else {
    lp_task_finish(t, state, &msg);
  }
  lp_buf_free(&msg);
}

static char *summarize_args(const lp_task *t);

/* A task that will not be sent: cancelled when the run stops, failed when
 * its pool has no process left. */
static void cancel_unsent(luapool *eng, lp_task *t) {
  lp_procs *ps = procs_of(eng, t->pool);
  const char *name = lp_names_get(&eng->names, t->fn);
  char text[1024];
  /* Read now: once finished, a task of the engine's own may be freed. */
  int relayed = t->foreign;
  if (ps->lost[0] && !lp_task_cancelled(t)) {
    if (!t->failnote) t->failnote = summarize_args(t);
    atomic_fetch_add(&ps->failed, 1);
    snprintf(text, sizeof text, "task '%s' (id %llu) failed: %s", name, (unsigned long long)t->id,
             ps->lost);
    finish_with(t, LP_TASK_FAILED, text);
    if (relayed) relay_done(t, 0);
    atomic_fetch_sub(&ps->held, 1);
    return;
  }
  snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled", name, (unsigned long long)t->id);
  finish_with(t, LP_TASK_CANCELLED, text);
  if (relayed) relay_done(t, 0);
  atomic_fetch_sub(&ps->held, 1);
}

static int push(luapool *eng, lp_task *t, int front) {
  lp_procs *ps = procs_of(eng, t->pool);
  pthread_mutex_lock(&ps->lock);
  if (ps->stopping || lp_task_cancelled(t)) {
    pthread_mutex_unlock(&ps->lock);
    cancel_unsent(eng, t);
    return 0;
  }
  if (lp_sendq_push(t->foreign ? &ps->relays : &ps->queue, t, front) != 0) {
    pthread_mutex_unlock(&ps->lock);
    return -1;
  }
  if (t->foreign)
    poke_for_relay(ps, t->at_ref);
  else
    poke_best(ps);
  pthread_mutex_unlock(&ps->lock);
  return 0;
}

/* A task comes to the pool: from the engine, or handed over by a process.
 * (Tasks that go again after a death or a failure are still held.) */
static int take(luapool *eng, lp_task *t) {
  lp_procs *ps = procs_of(eng, t->pool);
  atomic_fetch_add(&ps->held, 1);
  int rc = push(eng, t, 0);
  if (rc != 0) atomic_fetch_sub(&ps->held, 1);
  return rc;
}

static int place_push(lp_place *p, lp_task *t) { return take(((lp_procs *)p)->eng, t); }

static int place_idle(lp_place *p) { return atomic_load(&((lp_procs *)p)->held) == 0; }

static void put_cancel(lp_buf *b, uint64_t id) {
  size_t mark;
  if (lp_wire_begin(b, LP_MSG_CANCEL, &mark) == 0 && lp_wire_u64(b, id) == 0) lp_wire_end(b, mark);
}

static void place_cancel(lp_place *p, lp_task *t) {
  lp_procs *ps = (lp_procs *)p;
  pthread_mutex_lock(&ps->lock);
  if (t->away && t->owner >= 0 && t->owner < ps->n) {
    lp_conn *c = &ps->conns[t->owner];
    put_cancel(&c->out, t->id);
    poke(c);
  }
  pthread_mutex_unlock(&ps->lock);
}

static void cancel_pool(luapool *eng, lp_procs *ps) {
  pthread_mutex_lock(&ps->lock);
  ps->stopping = 1;
  size_t n = 0;
  long nres = 0;
  for (int i = 0; i < ps->n; i++) nres += ps->conns[i].nresend;
  lp_task **unsent = malloc(sizeof *unsent * (size_t)(ps->queue.n + ps->relays.n + nres + 1));
  for (lp_task *t; unsent && (t = lp_sendq_pop(&ps->queue));) unsent[n++] = t;
  for (lp_task *t; unsent && (t = lp_sendq_pop(&ps->relays));) unsent[n++] = t;
  for (int i = 0; unsent && i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    for (lp_task *t = c->resend, *next; t; t = next) next = t->qnext, unsent[n++] = t;
    c->resend = NULL;
    c->nresend = 0;
  }
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    size_t mark;
    if (lp_wire_begin(&c->out, LP_MSG_STOP, &mark) == 0) lp_wire_end(&c->out, mark);
    poke(c);
  }
  pthread_mutex_unlock(&ps->lock);
  for (size_t i = 0; i < n; i++) cancel_unsent(eng, unsent[i]);
  free(unsent);
}

static void place_cancel_all(lp_place *p) { cancel_pool(((lp_procs *)p)->eng, (lp_procs *)p); }

/* ---- starting a process ---- */

static int put_init(lp_procs *ps, lp_conn *c, lp_buf *b) {
  luapool *eng = ps->eng;
  size_t mark;
  lp_pooldef *d = &eng->pools[ps->pool];
  int threads = d->threads > 0 ? d->threads : 1;
  uint64_t base = ++eng->proc_gens << 32;
  if (lp_wire_begin(b, LP_MSG_INIT, &mark) || lp_wire_u64(b, (uint64_t)c->slot) ||
      lp_wire_u64(b, (uint64_t)threads) || lp_wire_u64(b, (uint64_t)eng->cfg.order) ||
      lp_wire_u64(b, eng->cfg.memory_limit) || lp_wire_u64(b, base) ||
      lp_wire_f64(b, eng->cfg.task_timeout) ||
      lp_wire_bytes(b, eng->chunkname, strlen(eng->chunkname)) ||
      lp_wire_bytes(b, eng->script, eng->script_len) ||
      lp_wire_bytes(b, d->name, strlen(d->name)) || lp_wire_u64(b, eng->cfg.trace_path != NULL) ||
      lp_wire_u64(b, (uint64_t)eng->cfg.retries))
    return -1;
  lp_wire_end(b, mark);
  return 0;
}

/* Under wlock and lock: a new process for c. 0 or -1. */
static int spawn_process(lp_procs *ps, lp_conn *c) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
  char *argv[] = {"luapool", "__worker", NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, ps->exe, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    return -1;
  }
  lp_buf init;
  lp_buf_init(&init);
  if (put_init(ps, c, &init) != 0 || lp_wire_write_all(sv[0], init.data, init.len) != 0) {
    /* It will find its pipe closed and leave. */
    lp_buf_free(&init);
    close(sv[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
  }
  lp_buf_free(&init);
  c->pid = pid;
  c->fd = sv[0];
  c->gen++;
  c->ready = 0;
  c->credits = 0;
  lp_buf_reset(&c->out);
  return 0;
}

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
    relay_result(t, state, res, len, note, notelen);
    atomic_store(&t->state, state);
    return;
  }
  lp_task_finish_away(t, (lp_task_state)state, res, len, note, notelen);
  (void)eng;
}

/* The subtree of t, sent to a process, has ended (or the process died). */
static void subtree_over(lp_procs *ps, lp_task *t) {
  luapool *eng = ps->eng;
  if (t->retry_pending) {
    atomic_fetch_add(&ps->retried, 1);
    t->retries--;
    t->retry_pending = 0;
    t->at_started = 0;
    lp_report_retry(&eng->report, t); /* the failed attempt's records go */
    atomic_store(&t->state, LP_TASK_QUEUED);
    lp_task_away_done(t, 1); /* the body's unit stays: it runs again */
    push(eng, t, 0);
    lp_task_unref(t);
    return;
  }
  if (t->foreign) {
    for (lp_record *r = lp_task_take_held(t), *next; r; r = next) {
      next = (lp_record *)atomic_load_explicit(&r->item.next, memory_order_relaxed);
      relay_record(t, eng, r);
      free(r);
    }
    relay_done(t, 1);
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
    if (state == LP_TASK_FAILED && t->retries > 0 && !lp_task_cancelled(t)) {
      t->retry_pending = 1; /* it runs again once its subtree is over */
      atomic_fetch_add(&c->ps->unfailed, 1);
    } else
      finish_remote(c->ps->eng, t, (int)state, res, len, note, notelen);
  }
  if (done) subtree_over(c->ps, t);
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
    relay_record(t, eng, rec);
    free(rec);
  } else {
    lp_report_add(&eng->report, t, rec);
  }
}

static void ask_to_share(lp_procs *ps, lp_conn *c);

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
    if (o != c && o->ready && o->credits > 0) ask_to_share(ps, o);
  }
  pthread_mutex_unlock(&ps->lock);
}

/* The process that handed over task `id` cancels it: so does the process
 * that runs it. */
static void on_cancel_export(lp_procs *ps, uint64_t id) {
  lp_task *t = NULL;
  for (int i = 0; i < ps->n && !t; i++) {
    lp_conn *o = &ps->conns[i];
    pthread_mutex_lock(&o->mlock);
    if ((t = lp_idmap_get(&o->tasks, id)) && t->foreign)
      lp_task_ref(t);
    else
      t = NULL;
    pthread_mutex_unlock(&o->mlock);
  }
  if (!t) return; /* not sent yet (it runs, and its end is relayed), or over */
  lp_task_cancel(t);
  lp_task_unref(t);
}

/* A process hands over a task that waits there (after HUNGRY): it runs
 * in whichever process asks next, and what happens to it is relayed. */
static void on_export(lp_conn *c, lp_wire_msg *m) {
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  uint64_t id, depth, retries;
  double prio, timeout;
  const char *fn, *args;
  size_t fnlen, argslen;
  if (lp_wire_get_u64(m, &id) || lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_u64(m, &depth) ||
      lp_wire_get_f64(m, &prio) || lp_wire_get_f64(m, &timeout) || lp_wire_get_u64(m, &retries) ||
      lp_wire_get_bytes(m, &args, &argslen))
    return;
  int fid = lp_names_intern(&eng->names, fn, fnlen);
  lp_buf b;
  lp_buf_init(&b);
  if (fid < 0 || lp_buf_append(&b, args, argslen) != 0) {
    lp_buf_free(&b);
    return;
  }
  lp_task *t = lp_task_new(eng, NULL, fid, prio == prio ? prio : 0, &b);
  if (!t) return;
  /* Counted where it was made: not a task of the engine's own. */
  atomic_fetch_sub(&eng->stats.host_created, 1);
  t->id = id;
  t->depth = depth > 1000000 ? 1000000 : (int)depth;
  t->timeout = timeout > 0 ? timeout : 0;
  t->retries = retries > 1000000 ? 1000000 : (int)retries;
  t->pool = ps->pool;
  atomic_store(&t->awaited, 1); /* its process reports it if nobody waits */
  t->foreign = 1;
  t->at_ref = c;
  t->at_gen = c->gen;
  take(eng, t);
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

/* Under the pool's lock: the process of c is gone, its counts join those
 * of the processes before it. Subtasks it had not finished are dropped. */
static void fold_stats(lp_procs *ps, lp_conn *c) {
  lp_rstats *b = &c->before, *r = &c->now;
  b->made += r->fin;
  b->fin += r->fin;
  b->run += r->run;
  b->failed += r->failed;
  b->retried += r->retried;
  b->cpu += r->cpu;
  if (r->depth > b->depth) b->depth = r->depth;
  for (int i = 0; i < ps->threads; i++) {
    b->threads[i].run += r->threads[i].run;
    b->threads[i].busy += r->threads[i].busy;
  }
  lp_tstat *keep = r->threads;
  memset(r, 0, sizeof *r);
  memset(keep, 0, sizeof *keep * (size_t)ps->threads);
  r->threads = keep;
}

static void place_totals(lp_place *p, lp_place_totals *out) {
  lp_procs *ps = (lp_procs *)p;
  {
    uint64_t failed = atomic_load(&ps->failed), undo = atomic_load(&ps->unfailed);
    pthread_mutex_lock(&ps->lock);
    out->queued += ps->queue.n + ps->relays.n;
    for (int i = 0; i < ps->n; i++) {
      const lp_rstats *rs[2] = {&ps->conns[i].now, &ps->conns[i].before};
      for (int j = 0; j < 2; j++) {
        const lp_rstats *r = rs[j];
        out->made += r->made;
        out->fin += r->fin;
        out->run += r->run;
        failed += r->failed;
        out->retried += r->retried;
        out->queued += r->queued;
        out->running += r->running;
        out->cpu += r->cpu;
        if (r->depth > out->depth) out->depth = r->depth;
      }
    }
    pthread_mutex_unlock(&ps->lock);
    out->retried += atomic_load(&ps->retried);
    out->failed += failed > undo ? failed - undo : 0;
  }
}

static int place_worker_stats(lp_place *p, luapool_worker_stats *out, int n) {
  lp_procs *ps = (lp_procs *)p;
  int k = 0;
  {
    pthread_mutex_lock(&ps->lock);
    for (int i = 0; i < ps->n; i++) {
      lp_conn *c = &ps->conns[i];
      for (int t = 0; t < ps->threads; t++, k++) {
        if (k >= n) continue;
        out[k].tasks_run = c->now.threads[t].run + c->before.threads[t].run;
        out[k].busy = c->now.threads[t].busy + c->before.threads[t].busy;
        out[k].process = ps->first_proc + i + 1;
        out[k].thread = t + 1;
      }
    }
    pthread_mutex_unlock(&ps->lock);
  }
  return k;
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
    case LP_MSG_EXPORT: on_export(c, m); break;
    case LP_MSG_CANCEL:
      if (lp_wire_get_u64(m, &v) == 0) on_cancel_export(ps, v);
      break;
    case LP_MSG_RESULT: on_result(c, m); break;
    case LP_MSG_RECORD: on_record(c, m); break;
    case LP_MSG_DONE:
      if (lp_wire_get_u64(m, &v) == 0 && (t = lookup(c, v, 1))) subtree_over(ps, t);
      break;
    case LP_MSG_COUNTER: {
      uint64_t req, delta, add;
      if (lp_wire_get_u64(m, &req) || lp_wire_get_bytes(m, &p, &n) || lp_wire_get_u64(m, &delta) ||
          lp_wire_get_u64(m, &add))
        break;
      int id = lp_names_intern(&ps->eng->names, p, n);
      _Atomic int64_t *slot = id >= 0 ? lp_engine_counter(ps->eng, id) : NULL;
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

/* ---- a process ends ---- */

static const char *signame(int sig) {
  switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGQUIT: return "SIGQUIT";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGXCPU: return "SIGXCPU";
    default: return "a signal";
  }
}

static void describe(pid_t pid, int status, const char *why, char *out, size_t n) {
  if (why)
    snprintf(out, n, "worker process %d %s", (int)pid, why);
  else if (WIFSIGNALED(status))
    snprintf(out, n, "worker process %d was killed by signal %d (%s)", (int)pid, WTERMSIG(status),
             signame(WTERMSIG(status)));
  else if (WIFEXITED(status))
    snprintf(out, n, "worker process %d exited with status %d", (int)pid, WEXITSTATUS(status));
  else
    snprintf(out, n, "worker process %d ended", (int)pid);
}

/* The one-line summary of a task's arguments for the report of a failure
 * nobody awaited, as a worker's Lua state makes it: (1, "text", table). */
static char *summarize_args(const lp_task *t) {
  luapool_cursor cur;
  int n = luapool_cursor_init(&cur, t->args.data, t->args.len);
  if (n < 0) return strdup("(unreadable)");
  lp_buf b;
  lp_buf_init(&b);
  lp_buf_append(&b, "(", 1);
  uint64_t inside = 0; /* values that belong to a table being skipped */
  luapool_value v;
  int first = 1;
  while (luapool_cursor_next(&cur, &v) == 0) {
    int top = inside == 0;
    if (!top) inside--;
    if (v.type == LUAPOOL_TTABLE) inside += (uint64_t)v.narr + 2 * (uint64_t)v.nhash;
    if (!top) continue;
    char tmp[80];
    if (!first) lp_buf_append(&b, ", ", 2);
    first = 0;
    switch (v.type) {
      case LUAPOOL_TBOOLEAN: snprintf(tmp, sizeof tmp, "%s", v.boolean ? "true" : "false"); break;
      case LUAPOOL_TINTEGER: snprintf(tmp, sizeof tmp, "%lld", (long long)v.integer); break;
      case LUAPOOL_TNUMBER: snprintf(tmp, sizeof tmp, "%.14g", v.number); break;
      case LUAPOOL_TSTRING:
        if (v.len > 60)
          snprintf(tmp, sizeof tmp, "\"...\"");
        else
          snprintf(tmp, sizeof tmp, "\"%.*s\"", (int)v.len, v.string);
        break;
      case LUAPOOL_TNIL: snprintf(tmp, sizeof tmp, "nil"); break;
      case LUAPOOL_TFUNCTION: snprintf(tmp, sizeof tmp, "function"); break;
      default: snprintf(tmp, sizeof tmp, "table"); break;
    }
    lp_buf_append(&b, tmp, strlen(tmp));
  }
  lp_buf_append(&b, ")", 2); /* with the NUL */
  char *s = strdup(b.data);
  lp_buf_free(&b);
  return s;
}

/* Fails or sends again every task the dead process had, then replaces it
 * (unless the engine is closing). */
static void process_died(lp_conn *c, const char *why) {
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  pthread_mutex_lock(&c->wlock);
  pthread_mutex_lock(&c->mlock);
  lp_idmap had = c->tasks;
  memset(&c->tasks, 0, sizeof c->tasks);
  pthread_mutex_unlock(&c->mlock);
  pthread_mutex_lock(&ps->lock);
  fold_stats(ps, c);
  pid_t pid = c->pid;
  int fd = c->fd;
  c->fd = -1;
  int was_ready = c->ready;
  c->ready = 0;
  c->credits = 0;
  lp_buf_reset(&c->out);
  int closing = ps->closing;
  pthread_mutex_unlock(&ps->lock);
  if (why && pid > 0) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  close(fd);
  char what[256];
  describe(pid, status, why, what, sizeof what);
  /* A process that died before it was ready is replaced a few times in a
   * row: a kill from outside can land while it loads. More often than that,
   * or after it said why it could not load, the next one would die the
   * same way (a broken script or worker program, no memory). */
  int replaced = 0;
  if (!closing) {
    pthread_mutex_lock(&ps->lock);
    c->early = was_ready ? 0 : c->early + 1;
    int again = was_ready || (!c->loaderr && why == NULL && c->early < EARLY_DEATHS);
    replaced = again && spawn_process(ps, c) == 0;
    if (!replaced) {
      c->gone = 1;
      if (!c->loaderr) {
        char text[320];
        snprintf(text, sizeof text, "%s before it was ready", what);
        c->loaderr = strdup(text);
      }
      pthread_cond_broadcast(&ps->ready_cond);
    }
    pthread_mutex_unlock(&ps->lock);
  }
  pthread_mutex_unlock(&c->wlock);
  for (size_t i = 0; i < had.cap; i++) {
    lp_task *t = had.slot[i];
    if (!t) continue;
    /* Never began: nothing was lost, it goes again, once. A process dies
     * before its STARTED frames go out too: the second time, a task that
     * kills its process at once is taken as having begun. */
    if (!t->at_started && !lp_task_finished(t) && !t->at_resent++) {
      atomic_store(&t->state, LP_TASK_QUEUED);
      lp_task_away_done(t, 1);
      pthread_mutex_lock(&ps->lock);
      int own = replaced && !ps->stopping && !lp_task_cancelled(t);
      if (own) {
        t->qnext = c->resend;
        c->resend = t;
        c->nresend++;
        poke(c);
      }
      pthread_mutex_unlock(&ps->lock);
      if (!own) push(eng, t, 1);
      lp_task_unref(t);
      continue;
    }
    if (!lp_task_finished(t) && !t->retry_pending) {
      if (t->retries > 0 && !lp_task_cancelled(t) && !closing) {
        t->retry_pending = 1;
      } else {
        if (!t->failnote) t->failnote = summarize_args(t);
        char text[512];
        if (t->at_overtime)
          snprintf(text, sizeof text, "task '%s' (id %llu) failed: timed out after %g s (%s)",
                   lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, t->timeout, what);
        else
          snprintf(text, sizeof text, "task '%s' (id %llu) failed: %s while running it",
                   lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, what);
        if (!lp_task_cancelled(t)) atomic_fetch_add(&ps->failed, 1);
        finish_with(t, lp_task_cancelled(t) ? LP_TASK_CANCELLED : LP_TASK_FAILED, text);
      }
    }
    subtree_over(ps, t);
  }
  free(had.slot);
  if (!replaced) { /* the slot is given up: what it was to run goes to the others */
    pthread_mutex_lock(&ps->lock);
    lp_task *list = c->resend;
    c->resend = NULL;
    c->nresend = 0;
    pthread_mutex_unlock(&ps->lock);
    for (lp_task *t = list, *next; t; t = next) {
      next = t->qnext;
      push(eng, t, 1);
    }
  }
  if (!replaced && !closing) {
    /* No process here any more: if none is left anywhere, nothing queued
     * can ever run. */
    pthread_mutex_lock(&ps->lock);
    int alive = 0;
    for (int i = 0; i < ps->n; i++) alive += !ps->conns[i].gone;
    pthread_mutex_unlock(&ps->lock);
    if (!alive) {
      pthread_mutex_lock(&ps->lock);
      snprintf(ps->lost, sizeof ps->lost, "no worker process is left in pool '%s' (the last: %s)",
               eng->pools[ps->pool].name, c->loaderr ? c->loaderr : what);
      pthread_mutex_unlock(&ps->lock);
      cancel_pool(eng, ps);
    }
  }
}

/* ---- time limits ---- */

/* The Lua hook in the worker stops a task over its time; a task stuck in C
 * code (a blocking call, a C loop) does not reach the hook. Past its limit
 * and this grace, its process is killed and the task fails as timed out. */
#define KILL_GRACE 1.0

/* Under lock. */
static void watchdog(lp_conn *c) {
  double now = lp_now();
  int late = 0;
  pthread_mutex_lock(&c->mlock);
  for (size_t i = 0; i < c->tasks.cap; i++) {
    lp_task *t = c->tasks.slot[i];
    if (t && t->at_started && t->deadline > 0 && now > t->deadline + KILL_GRACE &&
        !lp_task_finished(t) && !t->retry_pending) {
      t->at_overtime = 1;
      late = 1;
    }
  }
  pthread_mutex_unlock(&c->mlock);
  if (late && c->pid > 0 && c->fd >= 0) kill(c->pid, SIGKILL);
}

/* ---- threads ---- */

static void *reader_main(void *arg) {
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
      process_died(c, NULL);
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
      process_died(c, "sent a malformed message");
      if (ps->closing) break;
      continue;
    }
    memmove(in.data, in.data + off, in.len - off);
    in.len -= off;
  }
  lp_buf_free(&in);
  return NULL;
}

static int put_exec(lp_buf *b, luapool *eng, lp_task *t) {
  size_t mark;
  const char *fn = lp_names_get(&eng->names, t->fn);
  if (lp_wire_begin(b, LP_MSG_EXEC, &mark) || lp_wire_u64(b, t->id) ||
      lp_wire_bytes(b, fn, strlen(fn)) || lp_wire_u64(b, (uint64_t)t->depth) ||
      lp_wire_f64(b, t->priority) || lp_wire_f64(b, t->timeout) ||
      lp_wire_bytes(b, t->args.data, t->args.len))
    return -1;
  lp_wire_end(b, mark);
  return 0;
}

/* Under lock: c's process asks for work and none is queued. The process
 * with the most tasks waiting (by its last STATS) is asked to hand some
 * over, at most every 5 ms. */
static void ask_to_share(lp_procs *ps, lp_conn *c) {
  lp_conn *busy = NULL;
  double now = lp_now();
  for (int i = 0; i < ps->n; i++) {
    lp_conn *o = &ps->conns[i];
    if (o == c || !o->ready || o->fd < 0 || now - o->asked_at < 0.005) continue;
    if (o->now.queued >= 2 && (!busy || o->now.queued > busy->now.queued)) busy = o;
  }
  if (!busy) return;
  long n = busy->now.queued / 2 < c->credits ? busy->now.queued / 2 : c->credits;
  size_t mark;
  if (lp_wire_begin(&busy->out, LP_MSG_HUNGRY, &mark) || lp_wire_u64(&busy->out, (uint64_t)n)) {
    busy->out.len = mark;
    return;
  }
  lp_wire_end(&busy->out, mark);
  busy->asked_at = now;
  busy->now.queued -= n; /* until its next STATS says otherwise */
  poke(busy);
}

static void *feeder_main(void *arg) {
  lp_conn *c = arg;
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  lp_buf frames;
  lp_buf_init(&frames);
  lp_task *batch[SEND_BATCH];
  double watched = lp_now();
  pthread_mutex_lock(&ps->lock);
  while (!ps->closing) {
    if (lp_now() - watched >= 0.2) {
      watchdog(c);
      watched = lp_now();
    }
    int sendable = c->ready && c->fd >= 0 && c->credits > 0 && ps->queue.n > 0;
    int relays = c->ready && c->fd >= 0 && ps->relays.n > 0 && c->relay_pick;
    int resends = c->ready && c->fd >= 0 && c->resend && c->credits > 0;
    if (c->ready && c->credits > 0 && ps->queue.n == 0 && !ps->relays.n && !ps->stopping)
      ask_to_share(ps, c);
    if (!c->out.len && !sendable && !relays && !resends) {
      c->waiting = 1;
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200000000; /* the watchdog's round */
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&c->cond, &ps->lock, &ts);
      c->waiting = 0;
      if (lp_now() - watched >= 0.2) {
        watchdog(c);
        watched = lp_now();
      }
      continue;
    }
    /* Few tasks and several processes asking: share them out, the
     * process with the most room first. */
    long asking = 0, room = 0;
    lp_conn *best = c;
    for (int i = 0; i < ps->n; i++) {
      lp_conn *o = &ps->conns[i];
      if (o->credits <= 0 || !o->ready) continue;
      asking++;
      room += o->credits;
      if (o->credits > best->credits) best = o;
    }
    if (sendable && !relays && !resends && best != c && ps->queue.n < asking && !c->out.len) {
      poke(best);
      c->waiting = 1;
      pthread_cond_wait(&c->cond, &ps->lock);
      c->waiting = 0;
      continue;
    }
    /* Only now: frames taken out of c->out before that wait were dropped
     * (a REPLY lost there left its task waiting for good). */
    lp_buf_reset(&frames);
    lp_buf_append(&frames, c->out.data, c->out.len);
    lp_buf_reset(&c->out);
    long share =
        room > 0 && room > c->credits ? (ps->queue.n * c->credits + room - 1) / room : ps->queue.n;
    long want = share < c->credits ? share : c->credits;
    /* What its last process left first, within what it asked for; then
     * tasks handed over, outside the credits; then the queue. */
    int nr = 0;
    while (c->resend && nr < SEND_BATCH / 4 && nr < c->credits) {
      batch[nr++] = c->resend;
      c->resend = c->resend->qnext;
      c->nresend--;
    }
    c->credits -= nr;
    if (want > c->credits) want = c->credits;
    if (want < 0) want = 0;
    nr += relays ? lp_sendq_take(&ps->relays, batch + nr, SEND_BATCH / 4) : 0;
    c->relay_pick = 0;
    int nq = sendable ? lp_sendq_take(&ps->queue, batch + nr,
                                      want < SEND_BATCH / 2 ? (int)want : SEND_BATCH / 2)
                      : 0;
    int n = nr + nq;
    c->credits -= nq;
    if (ps->queue.n > 0) poke_best(ps); /* what is left goes to the others */
    if (ps->relays.n > 0) poke_for_relay(ps, c);
    unsigned gen = c->gen;
    pthread_mutex_unlock(&ps->lock);
    /* Under wlock the process cannot be replaced: the batch reaches the
     * process it was taken for, or goes back on the queue. */
    pthread_mutex_lock(&c->wlock);
    int live = c->gen == gen && c->fd >= 0;
    int sent = 0;
    pthread_mutex_lock(&c->mlock);
    for (; live && sent < n; sent++) {
      lp_task *t = batch[sent];
      if (put_exec(&frames, eng, t) != 0 || lp_idmap_put(&c->tasks, t) != 0) break;
      t->owner = c->slot;
      t->at_started = 0;
      lp_task_ref(t); /* the connection's, until DONE */
      lp_task_away_begin(t);
      /* Cancelled while it waited in the queue (lp_task_cancel saw it
       * queued and sent nothing): the CANCEL follows its EXEC. The fence
       * pairs with lp_task_cancel's: it sees RUNNING, or this sees cancel. */
      atomic_thread_fence(memory_order_seq_cst);
      if (lp_task_cancelled(t)) put_cancel(&frames, t->id);
    }
    pthread_mutex_unlock(&c->mlock);
    if (live) lp_wire_write_all(c->fd, frames.data, frames.len);
    pthread_mutex_unlock(&c->wlock);
    pthread_mutex_lock(&ps->lock);
    for (int i = n - 1; i >= sent; i--) /* room: they were in it */
      lp_sendq_push(batch[i]->foreign ? &ps->relays : &ps->queue, batch[i], 1);
  }
  pthread_mutex_unlock(&ps->lock);
  lp_buf_free(&frames);
  return NULL;
}

/* ---- start and stop ---- */

static int place_start(lp_place *p) {
  lp_procs *ps = (lp_procs *)p;
  luapool *eng = ps->eng;
  int pool = ps->pool;
  ps->n = eng->pools[pool].processes;
  lp_exe_worker(ps->exe, sizeof ps->exe);
  ps->threads = eng->pools[pool].threads > 0 ? eng->pools[pool].threads : 1;
  for (int i = 0; i < pool; i++) ps->first_proc += eng->pools[i].processes;
  ps->conns = calloc((size_t)ps->n, sizeof *ps->conns);
  if (!ps->conns) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    c->now.threads = calloc((size_t)ps->threads, sizeof *c->now.threads);
    c->before.threads = calloc((size_t)ps->threads, sizeof *c->before.threads);
    if (!c->now.threads || !c->before.threads)
      return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
    c->ps = ps;
    c->slot = i;
    c->fd = -1;
    c->pid = -1;
    lp_buf_init(&c->out);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_mutex_init(&c->mlock, NULL);
  }
  int rc = 0;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    pthread_mutex_lock(&ps->lock);
    int bad = spawn_process(ps, c) != 0;
    pthread_mutex_unlock(&ps->lock);
    if (bad) {
      c->gone = 1;
      rc = lp_engine_error(eng, LUAPOOL_ESYS,
                           "cannot start worker process %s: %s (LUAPOOL_WORKER_EXE may name the "
                           "luapool binary to run)",
                           ps->exe, strerror(errno));
      break;
    }
    if (pthread_create(&c->reader, NULL, reader_main, c) != 0 ||
        (pthread_create(&c->feeder, NULL, feeder_main, c) != 0 &&
         (pthread_cancel(c->reader), pthread_join(c->reader, NULL), 1))) {
      rc = lp_engine_error(eng, LUAPOOL_ESYS, "cannot start the threads of worker process %d",
                           i + 1);
      break;
    }
    c->threads_started = 1;
  }
  /* Every process has loaded the script, or says why it could not. */
  pthread_mutex_lock(&ps->lock);
  for (int i = 0; i < ps->n && rc == 0; i++) {
    lp_conn *c = &ps->conns[i];
    while (!c->ready && !c->loaderr && !c->gone) pthread_cond_wait(&ps->ready_cond, &ps->lock);
    if (c->loaderr && !c->gone)
      rc = lp_engine_error(eng, LUAPOOL_ESCRIPT, "%s", c->loaderr);
    else if (!c->ready)
      rc = lp_engine_error(eng, LUAPOOL_ESYS, "worker process %d could not start: %s", i + 1,
                           c->loaderr ? c->loaderr : "no reason given");
  }
  pthread_mutex_unlock(&ps->lock);
  return rc;
}

static void place_stop(lp_place *p) {
  lp_procs *ps = (lp_procs *)p;
  pthread_mutex_lock(&ps->lock);
  ps->closing = 1;
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    /* The process sees its socket close and leaves; the reader then sees
     * the end and stops. */
    if (c->fd >= 0) shutdown(c->fd, SHUT_WR);
    pthread_cond_signal(&c->cond);
  }
  pthread_mutex_unlock(&ps->lock);
  /* A worker stuck where it cannot see its socket close (a task in a C
   * call that never returns) gets two seconds, then SIGKILL. */
  for (int waited = 0;; waited++) {
    int left = 0;
    pthread_mutex_lock(&ps->lock);
    for (int i = 0; i < ps->n; i++) {
      lp_conn *c = &ps->conns[i];
      if (c->fd < 0 || c->pid <= 0) continue;
      left++;
      if (waited == 200) kill(c->pid, SIGKILL);
    }
    pthread_mutex_unlock(&ps->lock);
    if (!left || waited >= 200) break;
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  for (int i = 0; i < ps->n; i++) {
    lp_conn *c = &ps->conns[i];
    if (c->threads_started) {
      pthread_join(c->feeder, NULL);
      pthread_join(c->reader, NULL);
    } else if (c->fd >= 0 && c->pid > 0) {
      close(c->fd);
      kill(c->pid, SIGKILL);
      waitpid(c->pid, NULL, 0);
    }
    lp_buf_free(&c->out);
    free(c->tasks.slot);
    free(c->loaderr);
    free(c->now.threads);
    free(c->before.threads);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->wlock);
    pthread_mutex_destroy(&c->mlock);
  }
  for (lp_task *t; (t = lp_sendq_pop(&ps->queue));) lp_task_unref(t);
  for (lp_task *t; (t = lp_sendq_pop(&ps->relays));) lp_task_unref(t);
  for (int i = 0; i < ps->n; i++)
    for (lp_task *t = ps->conns[i].resend, *next; t; t = next) next = t->qnext, lp_task_unref(t);
  lp_sendq_free(&ps->queue);
  lp_sendq_free(&ps->relays);
  free(ps->conns);
  pthread_mutex_destroy(&ps->lock);
  pthread_cond_destroy(&ps->ready_cond);
  free(ps);
}

static const lp_place_ops procs_ops = {
    .start = place_start,
    .stop = place_stop,
    .push = place_push,
    .cancel = place_cancel,
    .cancel_all = place_cancel_all,
    .idle = place_idle,
    .totals = place_totals,
    .worker_stats = place_worker_stats,
};

int lp_procs_attach(luapool *eng) {
  if (eng->inline_mode) return 0; /* a sequential run runs every task itself */
  for (int i = 0; i < eng->npools; i++) {
    if (!eng->pools[i].processes) continue;
    lp_procs *ps = calloc(1, sizeof *ps);
    if (!ps) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
    ps->base.ops = &procs_ops;
    ps->eng = eng;
    ps->pool = i;
    pthread_mutex_init(&ps->lock, NULL);
    pthread_cond_init(&ps->ready_cond, NULL);
    eng->pools[i].place = &ps->base; /* stopped and freed at close, started or not */
    if (lp_sendq_init(&ps->queue) != 0 || lp_sendq_init(&ps->relays) != 0)
      return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  }
  return 0;
}

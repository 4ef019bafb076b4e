/*
 * place.c - a run through Redis, on the side of the engine that submits
 * it: the place (core/place.h) of the main pool when luapool_config.broker
 * is set.
 *
 * DESIGN. The run lives in Redis, not in this process: its roots (main,
 * and what a host submits) become entries of the run's stream, run by
 * whichever worker reads them first (`luapool worker`, and the worker this
 * process starts for its own --workers), and their subtrees run there.
 * Each root's end comes back into this process's inbox as one outcome, the
 * records of its whole subtree and its result, committed by the worker
 * atomically with the root's completion (functions.lua): the report here
 * puts the records in their order as it does for worker processes. Because
 * nothing of the run is only here, a run whose submitter died can be
 * finished by the workers and read by `luapool attach`.
 *
 * Two threads, each with its own connection: the sender writes the tasks
 * pushed (a batch in one pipelined round trip) and the receiver blocks on
 * the inbox, so a task goes out the moment it is pushed whatever the
 * receiver waits for.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bplace.h"
#include "broker.h"
#include "engine.h"
#include "idmap.h"
#include "proc.h"
#include "report.h"
#include "timer.h"
#include "wire.h"

extern char **environ;

typedef struct lp_bplace {
  lp_place base; /* first: the place */
  luapool *eng;
  lp_broker_url url;
  lp_runkeys k;
  char name[96];   /* this submitter among the run's workers */
  char inbox[192]; /* where the ends of its roots come */
  lp_redis tx, rx; /* the sender's connection, the receiver's */
  pthread_t sender, receiver;
  int threads;               /* how many of the two were started */
  _Atomic long long rx_id;   /* the receiver's connection, as Redis knows it */
  _Atomic int receiver_left; /* the receiver has seen `stopping` */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  lp_task *head, *tail; /* pushed, not yet written */
  long npend;
  lp_idmap away; /* written, outcome not yet in: by id */
  _Atomic long held;
  _Atomic int stopping;
  pid_t local;  /* the worker for this process's own --workers, or 0 */
  int attached; /* attached to a run on the broker (cfg.broker_run), not its submitter */
  /* The run's counts as its workers keep them (lp:{RUN}:n), for --stats and
   * --progress: bodies run, failed, subtasks made and finished, queued and
   * running now. */
  _Atomic uint64_t n_run, n_failed, n_made, n_fin;
  _Atomic long n_queued, n_running;
  _Atomic int gone; /* the broker no longer has the run (lost, or deleted when full) */
  int64_t started;
} lp_bplace;

/* ---- finishing a task from its outcome ---- */

static void finish_with(lp_bplace *bp, lp_task *t, lp_task_state state, const char *text) {
  lp_buf b;
  lp_buf_init(&b);
  if (!lp_task_finished(t)) {
    if (lp_broker_text(&b, text) != 0) lp_buf_reset(&b);
    lp_task_finish(t, state, &b);
  }
  lp_buf_free(&b);
  lp_task_away_done(t, 0);
  atomic_fetch_sub(&bp->held, 1);
  lp_task_unref(t);
}

/* The outcome (RECORD frames, then RESULT) of t, which was away. Every
 * length is checked by the wire's readers; an outcome that is not one
 * fails t alone. */
static void apply(lp_bplace *bp, lp_task *t, const char *p, size_t n) {
  luapool *eng = bp->eng;
  lp_wire_msg m;
  int finished = 0;
  while (n > 0) {
    long used = lp_wire_frame(p, n, &m);
    if (used <= 0) break;
    p += used;
    n -= (size_t)used;
    uint64_t id, kind, task, state, done;
    const char *fn, *data, *note;
    size_t fnlen, len, notelen;
    double prio;
    if (m.type == LP_MSG_RECORD) {
      if (lp_wire_get_u64(&m, &id) || lp_wire_get_u64(&m, &kind) || lp_wire_get_u64(&m, &task) ||
          lp_wire_get_bytes(&m, &fn, &fnlen) || lp_wire_get_f64(&m, &prio) ||
          lp_wire_get_bytes(&m, &data, &len) || kind > LUAPOOL_RECORD_PRINT)
        break;
      lp_record *rec = lp_record_new((int)kind, NULL, prio, data, len);
      if (!rec) break;
      rec->task = task;
      rec->fn = lp_names_intern(&eng->names, fn, fnlen);
      if (lp_report_add(&eng->report, t, rec)) lp_hold_block(&eng->report);
    } else if (m.type == LP_MSG_RESULT) {
      if (lp_wire_get_u64(&m, &id) || lp_wire_get_u64(&m, &state) || lp_wire_get_u64(&m, &done) ||
          lp_wire_get_bytes(&m, &data, &len) || lp_wire_get_bytes(&m, &note, &notelen) ||
          state < LP_TASK_OK || state > LP_TASK_CANCELLED)
        break;
      if (!lp_task_finished(t))
        lp_task_finish_away(t, (lp_task_state)state, data, len, note, notelen);
      finished = 1;
      break;
    } else {
      break;
    }
  }
  if (!finished) {
    char text[512];
    snprintf(text, sizeof text,
             "task '%s' (id %llu) failed: its outcome from the broker is malformed",
             lp_names_get(&eng->names, t->fn), (unsigned long long)t->id);
    finish_with(bp, t, LP_TASK_FAILED, text);
    return;
  }
  lp_task_away_done(t, 0);
  atomic_fetch_sub(&bp->held, 1);
  lp_task_unref(t);
}

/* The run cannot go on (the broker is gone, or a worker could not load the
 * script): every task held fails with `why`. */
static void fail_all(lp_bplace *bp, const char *why) {
  luapool *eng = bp->eng;
  for (;;) {
    pthread_mutex_lock(&bp->lock);
    lp_task *t = bp->head;
    if (t) {
      bp->head = t->qnext;
      if (!bp->head) bp->tail = NULL;
      bp->npend--;
    } else {
      for (size_t i = 0; i < bp->away.cap && !t; i++)
        if (bp->away.slot && bp->away.slot[i]) t = lp_idmap_take(&bp->away, bp->away.slot[i]->id);
    }
    pthread_mutex_unlock(&bp->lock);
    if (!t) return;
    char text[1024];
    if (lp_task_cancelled(t))
      snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled",
               lp_names_get(&eng->names, t->fn), (unsigned long long)t->id);
    else
      snprintf(text, sizeof text, "task '%s' (id %llu) failed: %s",
               lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, why);
    finish_with(bp, t, lp_task_cancelled(t) ? LP_TASK_CANCELLED : LP_TASK_FAILED, text);
  }
}

/* ---- the sender ---- */

static int put_task(lp_bplace *bp, lp_task *t, lp_buf *x) {
  luapool *eng = bp->eng;
  const char *fn = lp_names_get(&eng->names, t->fn);
  lp_wire_task wt = {fn,           strlen(fn), (uint64_t)t->depth,
                     t->priority,  t->timeout, (uint64_t)(t->retries > 0 ? t->retries : 0),
                     t->args.data, t->args.len};
  lp_buf_reset(x);
  return lp_wire_put_export(x, t->id, &wt);
}

/* How long the broker may be gone before the run fails. */
#define GONE_FOR 30.0

/* Opens c again after a loss, trying with a growing pause for GONE_FOR
 * seconds: 0, or -1 (stopping, or the broker is gone for good). */
static int reconnect(lp_bplace *bp, lp_redis *c, int functions) {
  double until = lp_now() + GONE_FOR, pause = 0.05;
  while (!atomic_load(&bp->stopping)) {
    if (lp_redis_open(c, &bp->url, 5.0, functions) == 0) return 0;
    if (lp_now() > until) return -1;
    usleep((useconds_t)(pause * 1e6));
    pause = pause * 2 < 1 ? pause * 2 : 1;
  }
  return -1;
}

/* The receiver's connection as Redis knows it (CLIENT UNBLOCK wakes it). */
static void remember_rx_id(lp_bplace *bp) {
  redisReply *id = lp_redis_cmdf(&bp->rx, "CLIENT ID");
  if (id && id->type == REDIS_REPLY_INTEGER) atomic_store(&bp->rx_id, id->integer);
  if (id) freeReplyObject(id);
}

/* The task with this id failed to be handed out: it fails, saying why. */
static void refused_task(lp_bplace *bp, uint64_t id, const char *why) {
  pthread_mutex_lock(&bp->lock);
  lp_task *t = lp_idmap_take(&bp->away, id);
  pthread_mutex_unlock(&bp->lock);
  if (!t) return;
  char text[1024];
  snprintf(text, sizeof text, "task '%s' (id %llu) failed: the broker refused it: %s",
           lp_names_get(&bp->eng->names, t->fn), (unsigned long long)t->id, why);
  finish_with(bp, t, LP_TASK_FAILED, text);
}

static void *sender_main(void *arg) {
  lp_bplace *bp = arg;
  lp_buf x;
  lp_buf_init(&x);
  for (;;) {
    pthread_mutex_lock(&bp->lock);
    while (!bp->head && !atomic_load(&bp->stopping)) pthread_cond_wait(&bp->cond, &bp->lock);
    lp_task *list = bp->head;
    bp->head = bp->tail = NULL;
    long n = bp->npend;
    bp->npend = 0;
    pthread_mutex_unlock(&bp->lock);
    if (!list) break;   /* stopping */
    if (bp->attached) { /* the run's roots are on the broker already */
      for (lp_task *t = list, *next; t; t = next) {
        next = t->qnext;
        pthread_mutex_lock(&bp->lock);
        lp_idmap_put(&bp->away, t);
        pthread_mutex_unlock(&bp->lock);
      }
      continue;
    }
    /* The batch in the protocol's bytes: once a task is in the map its
     * outcome may free it, so nothing of it is read after. */
    char **cmds = calloc((size_t)n, sizeof *cmds);
    int *lens = calloc((size_t)n, sizeof *lens);
    uint64_t *ids = calloc((size_t)n, sizeof *ids);
    int k = 0;
    for (lp_task *t = list, *next; t; t = next) {
      next = t->qnext;
      char key[32];
      int kl = snprintf(key, sizeof key, "r%llu", (unsigned long long)t->id);
      t->attempts = 1;
      int rc = put_task(bp, t, &x);
      t->retries = 0; /* the worker that runs it runs it again */
      const char *argv[] = {"XADD", bp->k.q, "*", "k", key, "x", x.data, "o", bp->name};
      size_t alens[] = {4, strlen(bp->k.q), 1, 1, (size_t)kl, 1, x.len, 1, strlen(bp->name)};
      if (cmds && lens && ids && rc == 0 && k < n &&
          (lens[k] = redisFormatCommandArgv(&cmds[k], 9, argv, alens)) > 0)
        ids[k++] = t->id;
      pthread_mutex_lock(&bp->lock);
      lp_idmap_put(&bp->away, t);
      pthread_mutex_unlock(&bp->lock);
      if (!k || ids[k - 1] != t->id) refused_task(bp, t->id, "out of memory");
    }
    /* Sent until every reply is in: a task sent twice (its XADD done, the
     * reply lost with the connection) commits once, under its key. */
    int done = 0;
    while (done < k) {
      for (int i = done; i < k; i++) lp_redis_append_raw(&bp->tx, cmds[i], (size_t)lens[i]);
      for (; done < k; done++) {
        redisReply *r = lp_redis_reply(&bp->tx);
        if (!r) break;
        if (r->type == REDIS_REPLY_ERROR) refused_task(bp, ids[done], r->str);
        freeReplyObject(r);
      }
      if (done < k && reconnect(bp, &bp->tx, 1) != 0) {
        char why[600];
        snprintf(why, sizeof why, "%s", bp->tx.err);
        fail_all(bp, why);
        break;
      }
    }
    for (int i = 0; i < k; i++) free(cmds[i]);
    free(cmds);
    free(lens);
    free(ids);
  }
  lp_buf_free(&x);
  return NULL;
}

/* ---- the receiver ---- */

/* The run's counts (lp:{RUN}:n): done, failed, made, fin summed by the
 * workers; queued:W and running:W one per worker. */
static void read_counts(lp_bplace *bp, lp_redis *c) {
  redisReply *r = lp_redis_cmdf(c, "HGETALL %s", bp->k.n);
  if (!r) return;
  uint64_t run = 0, failed = 0, made = 0, fin = 0;
  long queued = 0, running = 0;
  for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
    const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
    if (!k || !v) continue;
    long long x = strtoll(v, NULL, 10);
    if (x < 0) x = 0;
    if (strcmp(k, "done") == 0) run = (uint64_t)x;
    if (strcmp(k, "failed") == 0) failed = (uint64_t)x;
    if (strcmp(k, "made") == 0) made = (uint64_t)x;
    if (strcmp(k, "fin") == 0) fin = (uint64_t)x;
    if (strncmp(k, "queued:", 7) == 0) queued += (long)x;
    if (strncmp(k, "running:", 8) == 0) running += (long)x;
  }
  freeReplyObject(r);
  atomic_store(&bp->n_run, run);
  atomic_store(&bp->n_failed, failed);
  atomic_store(&bp->n_made, made);
  atomic_store(&bp->n_fin, fin);
  atomic_store(&bp->n_queued, queued);
  atomic_store(&bp->n_running, running);
}

/* The entries read, acknowledged in one command: one round trip per read,
 * not per root (a host that submits many roots reads thousands at once). */
static void ack_all(lp_bplace *bp, redisReply *entries) {
  if (entries->type != REDIS_REPLY_ARRAY || !entries->elements) return;
  const char **argv = malloc(sizeof *argv * (entries->elements + 3));
  size_t *lens = malloc(sizeof *lens * (entries->elements + 3));
  int n = 0;
  if (argv && lens) {
    argv[0] = "XACK";
    argv[1] = bp->inbox;
    argv[2] = LP_BROKER_GROUP;
    lens[0] = 4;
    lens[1] = strlen(bp->inbox);
    lens[2] = strlen(LP_BROKER_GROUP);
    n = 3;
    for (size_t e = 0; e < entries->elements; e++) {
      redisReply *en = entries->element[e];
      if (en->type != REDIS_REPLY_ARRAY || !en->elements) continue;
      argv[n] = en->element[0]->str;
      lens[n++] = en->element[0]->len;
    }
  }
  if (n > 3) {
    redisReply *r = lp_redis_cmd(&bp->rx, n, argv, lens);
    if (r) freeReplyObject(r);
  }
  free(argv);
  free(lens);
}

static void take_ends(lp_bplace *bp, redisReply *streams) {
  /* [[inbox, [[id, [k, key, r, outcome]], ...]]] */
  if (!streams || streams->type != REDIS_REPLY_ARRAY) return;
  for (size_t s = 0; s < streams->elements; s++) {
    redisReply *st = streams->element[s];
    if (st->type != REDIS_REPLY_ARRAY || st->elements < 2) continue;
    redisReply *entries = st->element[1];
    ack_all(bp, entries);
    /* Once per read, not per root: the counts hold the work that made
     * every outcome read (workers send them ahead of their commits). */
    if (entries->type == REDIS_REPLY_ARRAY && entries->elements) read_counts(bp, &bp->rx);
    for (size_t e = 0; e < entries->elements; e++) {
      redisReply *en = entries->element[e];
      if (en->type != REDIS_REPLY_ARRAY || en->elements < 2) continue;
      redisReply *f = en->element[1];
      const char *key = NULL, *out = NULL;
      size_t outlen = 0;
      for (size_t i = 0; f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        if (strcmp(f->element[i]->str, "k") == 0) key = f->element[i + 1]->str;
        if (strcmp(f->element[i]->str, "r") == 0) {
          out = f->element[i + 1]->str;
          outlen = f->element[i + 1]->len;
        }
      }
      if (!key || key[0] != 'r' || !out) continue;
      uint64_t id = strtoull(key + 1, NULL, 10);
      pthread_mutex_lock(&bp->lock);
      lp_task *t = lp_idmap_take(&bp->away, id);
      pthread_mutex_unlock(&bp->lock);
      if (t) apply(bp, t, out, outlen);
    }
  }
}

/* Unawaited failures the workers met, and the run's state as the workers
 * see it (a script they cannot load fails the run). */
static int look_at_run(lp_bplace *bp) {
  luapool *eng = bp->eng;
  read_counts(bp, &bp->rx);
  redisReply *r = lp_redis_cmdf(&bp->rx, "LPOP %s 100", bp->k.fail);
  if (!r) return -1;
  if (r->type == REDIS_REPLY_ARRAY)
    for (size_t i = 0; i < r->elements; i++) {
      atomic_fetch_add(&eng->unawaited_failures, 1);
      lp_report_failure(&eng->report, r->element[i]->str);
    }
  freeReplyObject(r);
  r = lp_redis_cmdf(&bp->rx, "HMGET %s state error", bp->k.meta);
  if (!r) return -1;
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && !r->element[0]->str) {
    freeReplyObject(r);
    atomic_store(&bp->gone, 1);
    fail_all(bp,
             "the broker no longer has this run (it restarted without persistence, or the "
             "run's keys were deleted)");
    return 0;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str &&
      strcmp(r->element[0]->str, "failed") == 0 && r->element[1]->str) {
    char why[1024];
    snprintf(why, sizeof why, "%s", r->element[1]->str);
    freeReplyObject(r);
    fail_all(bp, why);
    return 0;
  }
  freeReplyObject(r);
  r = lp_redis_cmdf(&bp->rx, "HSET %s beat %lld", bp->k.meta, (long long)lp_broker_ms());
  if (!r) return -1;
  if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "OOM", 3) == 0) {
    /* A full broker takes no commit: the run cannot end. Its keys go (a
     * delete is allowed), which ends it for its workers too. */
    char why[600];
    snprintf(why, sizeof why, "the broker is full (maxmemory): %s", r->str);
    freeReplyObject(r);
    const char *keys[] = {bp->k.q, bp->k.res, bp->k.src, bp->inbox, bp->k.meta};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
      redisReply *d = lp_redis_cmdf(&bp->rx, "DEL %s", keys[i]);
      if (d) freeReplyObject(d);
    }
    atomic_store(&bp->gone, 1);
    fail_all(bp, why);
    return 0;
  }
  freeReplyObject(r);
  return 0;
}

/* Attached to a run: the outcomes of its roots as the run's workers
 * committed them (res), whoever submitted the run. */
static void take_committed(lp_bplace *bp) {
  uint64_t ids[64];
  int n = 0;
  pthread_mutex_lock(&bp->lock);
  for (size_t i = 0; bp->away.slot && i < bp->away.cap && n < 64; i++)
    if (bp->away.slot[i]) ids[n++] = bp->away.slot[i]->id;
  pthread_mutex_unlock(&bp->lock);
  for (int i = 0; i < n; i++) {
    redisReply *r = lp_redis_cmdf(&bp->rx, "HGET %s r%llu", bp->k.res, (unsigned long long)ids[i]);
    if (r && r->type == REDIS_REPLY_STRING) {
      pthread_mutex_lock(&bp->lock);
      lp_task *t = lp_idmap_take(&bp->away, ids[i]);
      pthread_mutex_unlock(&bp->lock);
      if (t) apply(bp, t, r->str, r->len);
    }
    if (r) freeReplyObject(r);
  }
}

static void *receiver_main(void *arg) {
  lp_bplace *bp = arg;
  int64_t looked = 0;
  while (!atomic_load(&bp->stopping) && bp->attached) {
    take_committed(bp);
    if (lp_broker_ms() - looked >= 100) {
      looked = lp_broker_ms();
      if (look_at_run(bp) != 0 && reconnect(bp, &bp->rx, 0) != 0) {
        fail_all(bp, bp->rx.err);
        break;
      }
    }
    usleep(20000);
  }
  while (!atomic_load(&bp->stopping) && !bp->attached) {
    redisReply *r =
        lp_redis_cmdf(&bp->rx, "XREADGROUP GROUP %s %s COUNT 512 BLOCK 100 STREAMS %s >",
                      LP_BROKER_GROUP, bp->name, bp->inbox);
    if (!r) {
      char why[600];
      snprintf(why, sizeof why, "%s", bp->rx.err);
      if (reconnect(bp, &bp->rx, 0) != 0) {
        fail_all(bp, why);
        /* Without the broker nothing more comes: wait to be stopped. */
        while (!atomic_load(&bp->stopping)) usleep(10000);
        break;
      }
      remember_rx_id(bp);
      /* What the lost read had taken: the inbox's pending entries. */
      r = lp_redis_cmdf(&bp->rx, "XREADGROUP GROUP %s %s COUNT 100000 STREAMS %s 0",
                        LP_BROKER_GROUP, bp->name, bp->inbox);
      if (r && r->type == REDIS_REPLY_ARRAY) take_ends(bp, r);
      if (r) freeReplyObject(r);
      continue;
    }
    if (r->type == REDIS_REPLY_ARRAY) take_ends(bp, r);
    /* An error: the inbox is gone with the run (look_at_run says so);
     * meanwhile, no spinning. */
    if (r->type == REDIS_REPLY_ERROR) usleep(50000);
    freeReplyObject(r);
    int64_t now = lp_broker_ms();
    if (now - looked >= 100) {
      looked = now;
      look_at_run(bp);
    }
  }
  atomic_store(&bp->receiver_left, 1);
  return NULL;
}

/* Tells the workers listed in `hash` (lp:workers, or the run's wk) that the
 * run began or is ending: they look at once rather than at their next
 * round. */
static void wake_workers(lp_bplace *bp, const char *hash) {
  redisReply *r = lp_redis_cmdf(&bp->tx, "HKEYS %s", hash);
  if (!r) return;
  int n = 0;
  for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    char wake[160];
    snprintf(wake, sizeof wake, "lp:wake:%s", r->element[i]->str);
    const char *argv[] = {"XADD", wake, "NOMKSTREAM", "MAXLEN", "~", "64", "*", "run", bp->k.run};
    if (lp_redis_append(&bp->tx, 9, argv, NULL) == 0) n++;
  }
  freeReplyObject(r);
  while (n-- > 0) {
    redisReply *a = lp_redis_reply(&bp->tx);
    if (!a) break;
    freeReplyObject(a);
  }
}

/* ---- the place ---- */

static int bplace_push(lp_place *p, lp_task *t) {
  lp_bplace *bp = (lp_bplace *)p;
  lp_task_ref(t); /* ours, until its outcome */
  lp_task_away_begin(t);
  atomic_fetch_add(&bp->held, 1);
  pthread_mutex_lock(&bp->lock);
  t->qnext = NULL;
  if (bp->tail)
    bp->tail->qnext = t;
  else
    bp->head = t;
  bp->tail = t;
  long n = ++bp->npend;
  pthread_cond_signal(&bp->cond);
  pthread_mutex_unlock(&bp->lock);
  return n > 1000000 ? 1000000 : (int)n;
}

/* A root cancelled here is over here: what its worker still does is no
 * longer heard (its outcome finds no task). */
static void bplace_cancel(lp_place *p, lp_task *t) {
  lp_bplace *bp = (lp_bplace *)p;
  pthread_mutex_lock(&bp->lock);
  lp_task *got = lp_idmap_take(&bp->away, t->id);
  pthread_mutex_unlock(&bp->lock);
  if (!got) return; /* not written yet (the sender or fail_all has it), or over */
  char text[512];
  snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled",
           lp_names_get(&bp->eng->names, t->fn), (unsigned long long)t->id);
  finish_with(bp, got, LP_TASK_CANCELLED, text);
}

static void bplace_cancel_all(lp_place *p) {
  lp_bplace *bp = (lp_bplace *)p;
  redisReply *r = lp_redis_cmdf(&bp->tx, "HSET %s state cancelled", bp->k.meta);
  if (r) freeReplyObject(r);
  fail_all(bp, "the run was cancelled");
}

static int bplace_idle(lp_place *p) { return atomic_load(&((lp_bplace *)p)->held) == 0; }

/* What the run's workers counted, as of the receiver's last look (every
 * 100 ms, and at the end). */
static void bplace_totals(lp_place *p, lp_place_totals *sum) {
  lp_bplace *bp = (lp_bplace *)p;
  sum->made += atomic_load(&bp->n_made);
  sum->fin += atomic_load(&bp->n_fin);
  sum->run += atomic_load(&bp->n_run);
  sum->failed += atomic_load(&bp->n_failed);
  sum->queued += atomic_load(&bp->n_queued);
  sum->running += atomic_load(&bp->n_running);
}

/* Its threads are other processes' (luapool status lists the workers). */
static int bplace_worker_stats(lp_place *p, struct luapool_worker_stats *out, int n) {
  (void)p;
  (void)out;
  (void)n;
  return 0;
}

/* A content hash of the script: workers keep their Lua states by it. */
static uint64_t fnv1a(const char *p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

static void new_run_id(char *out) {
  unsigned char b[8];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
    uint64_t v =
        fnv1a((const char *)&out, sizeof out) ^ (uint64_t)lp_broker_ms() ^ (uint64_t)getpid();
    memcpy(b, &v, sizeof b);
  }
  if (fd >= 0) close(fd);
  for (int i = 0; i < 8; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

static int redis_error(lp_bplace *bp, redisReply *r, const char *what) {
  luapool *eng = bp->eng;
  if (!r) return lp_engine_error(eng, LUAPOOL_ESYS, "%s", bp->tx.err);
  int rc = r->type == REDIS_REPLY_ERROR
               ? lp_engine_error(eng, LUAPOOL_ESYS, "the broker refused %s: %s", what, r->str)
               : 0;
  freeReplyObject(r);
  return rc;
}

/* The worker for this process's own threads: `luapool worker` on this run
 * alone, which leaves when the run is over. */
static int start_local(lp_bplace *bp) {
  luapool *eng = bp->eng;
  char exe[4096], threads[16], lease[32];
  lp_exe_worker(exe, sizeof exe);
  snprintf(threads, sizeof threads, "%d", eng->cfg.workers);
  snprintf(lease, sizeof lease, "%g", eng->cfg.lease > 0 ? eng->cfg.lease : 10.0);
  char *argv[] = {"luapool", "worker",  "--broker", (char *)eng->cfg.broker, "--workers", threads,
                  "--run",   bp->k.run, NULL};
  (void)lease;
  if (posix_spawn(&bp->local, exe, NULL, NULL, argv, environ) != 0) {
    bp->local = 0;
    return lp_engine_error(eng, LUAPOOL_ESYS, "cannot start the local worker %s: %s", exe,
                           strerror(errno));
  }
  return 0;
}

static int start_threads(lp_bplace *bp) {
  if (pthread_create(&bp->sender, NULL, sender_main, bp) != 0)
    return lp_engine_error(bp->eng, LUAPOOL_ESYS, "cannot start a thread");
  bp->threads = 1;
  if (pthread_create(&bp->receiver, NULL, receiver_main, bp) != 0)
    return lp_engine_error(bp->eng, LUAPOOL_ESYS, "cannot start a thread");
  bp->threads = 2;
  return 0;
}

/* Attached to run k.run: it must be there; nothing of it is made here. */
static int attach_run(lp_bplace *bp) {
  luapool *eng = bp->eng;
  redisReply *r = lp_redis_cmdf(&bp->tx, "EXISTS %s", bp->k.meta);
  int there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
  if (r) freeReplyObject(r);
  if (!r) return lp_engine_error(eng, LUAPOOL_ESYS, "%s", bp->tx.err);
  if (!there)
    return lp_engine_error(eng, LUAPOOL_EINVAL,
                           "no run %s on the broker (luapool status lists them)", bp->k.run);
  bp->attached = 1;
  return start_threads(bp);
}

static int bplace_start(lp_place *p) {
  lp_bplace *bp = (lp_bplace *)p;
  luapool *eng = bp->eng;
  char err[512];
  if (lp_broker_url_parse(eng->cfg.broker, &bp->url, err, sizeof err) != 0)
    return lp_engine_error(eng, LUAPOOL_EINVAL, "%s", err);
  if (lp_redis_open(&bp->tx, &bp->url, 5.0, 1) != 0)
    return lp_engine_error(eng, LUAPOOL_ESYS, "%s", bp->tx.err);
  if (lp_redis_open(&bp->rx, &bp->url, 5.0, 0) != 0)
    return lp_engine_error(eng, LUAPOOL_ESYS, "%s", bp->rx.err);
  remember_rx_id(bp);
  char run[LP_RUN_ID_LEN + 1];
  new_run_id(run);
  if (eng->cfg.broker_run) snprintf(run, sizeof run, "%s", eng->cfg.broker_run);
  lp_runkeys_init(&bp->k, run);
  lp_broker_name(bp->name, sizeof bp->name);
  lp_runkeys_inbox(&bp->k, bp->name, bp->inbox, sizeof bp->inbox);
  bp->started = lp_broker_ms();
  if (eng->cfg.broker_run) return attach_run(bp);
  char sha[17], host[64] = "", submitter[96];
  snprintf(sha, sizeof sha, "%016llx", (unsigned long long)fnv1a(eng->script, eng->script_len));
  gethostname(host, sizeof host - 1);
  snprintf(submitter, sizeof submitter, "%s %d", host, (int)getpid());
  char order[8], retries[16], timeout[32], memlimit[32], lease[32], started[24];
  snprintf(order, sizeof order, "%d", eng->cfg.order);
  snprintf(retries, sizeof retries, "%d", eng->cfg.retries);
  snprintf(timeout, sizeof timeout, "%.17g", eng->cfg.task_timeout);
  snprintf(memlimit, sizeof memlimit, "%zu", eng->cfg.memory_limit);
  snprintf(lease, sizeof lease, "%.17g", eng->cfg.lease > 0 ? eng->cfg.lease : 10.0);
  snprintf(started, sizeof started, "%lld", (long long)bp->started);
  const char *meta[] = {"HSET",    bp->k.meta, "script",       eng->chunkname, "sha",
                        sha,       "order",    order,          "retries",      retries,
                        "timeout", timeout,    "memory_limit", memlimit,       "lease",
                        lease,     "started",  started,        "submitter",    submitter,
                        "beat",    started,    "state",        "running"};
  int rc;
  if ((rc = redis_error(bp, lp_redis_cmd(&bp->tx, 24, meta, NULL), "the run")) != 0) return rc;
  const char *src[] = {"SET", bp->k.src, eng->script};
  size_t srclens[] = {3, strlen(bp->k.src), eng->script_len};
  if ((rc = redis_error(bp, lp_redis_cmd(&bp->tx, 3, src, srclens), "the script")) != 0) return rc;
  if ((rc = redis_error(
           bp, lp_redis_cmdf(&bp->tx, "XGROUP CREATE %s %s 0 MKSTREAM", bp->k.q, LP_BROKER_GROUP),
           "the run's stream")) != 0 ||
      (rc = redis_error(
           bp, lp_redis_cmdf(&bp->tx, "XGROUP CREATE %s %s 0 MKSTREAM", bp->inbox, LP_BROKER_GROUP),
           "the run's inbox")) != 0)
    return rc;
  /* Listed last: a worker that sees the run finds all of it. */
  if ((rc = redis_error(bp,
                        lp_redis_cmdf(&bp->tx, "ZADD lp:runs %lld %s", (long long)bp->started, run),
                        "the run")) != 0)
    return rc;
  wake_workers(bp, "lp:workers");
  if (eng->cfg.workers > 0 && (rc = start_local(bp)) != 0) return rc;
  return start_threads(bp);
}

/* Whether every worker that joined the run has closed its processes for
 * it (it is no longer listed in wk), or is gone (no heartbeat for a lease). */
static int workers_closed(lp_bplace *bp) {
  redisReply *r = lp_redis_cmdf(&bp->tx, "HGETALL %s", bp->k.wk);
  if (!r) return 1;
  int closed = 1;
  double lease = bp->eng->cfg.lease > 0 ? bp->eng->cfg.lease : 10.0;
  for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements && closed; i += 2) {
    redisReply *h = lp_redis_cmdf(&bp->tx, "HGET lp:workers %s", r->element[i]->str);
    long long beat = 0;
    if (h && h->type == REDIS_REPLY_STRING) sscanf(h->str, "%*s %*d %*d %lld", &beat);
    if (h) freeReplyObject(h);
    closed = lp_broker_ms() - beat > (long long)(lease * 1000);
  }
  freeReplyObject(r);
  return closed;
}

/* The run's end: its workers close their processes for it, which report
 * what they still know (failures nobody awaited, found as the processes'
 * engines close); those are read, then the run is marked done. */
static void finish_run(lp_bplace *bp) {
  luapool *eng = bp->eng;
  redisReply *r = lp_redis_cmdf(&bp->tx, "HGET %s state", bp->k.meta);
  int cancelled = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "cancelled") == 0;
  int failed = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "failed") == 0;
  if (r) freeReplyObject(r);
  if (!cancelled && !failed) {
    r = lp_redis_cmdf(&bp->tx, "HSET %s state ending", bp->k.meta);
    if (r) freeReplyObject(r);
  }
  wake_workers(bp, bp->k.wk);
  while (!workers_closed(bp)) usleep(1000);
  for (;;) {
    r = lp_redis_cmdf(&bp->tx, "LPOP %s 100", bp->k.fail);
    if (!r || r->type != REDIS_REPLY_ARRAY) break;
    for (size_t i = 0; i < r->elements; i++) {
      atomic_fetch_add(&eng->unawaited_failures, 1);
      lp_report_failure(&eng->report, r->element[i]->str);
    }
    freeReplyObject(r);
  }
  if (r) freeReplyObject(r);
  read_counts(bp, &bp->tx); /* the last, for --stats (the receiver has stopped) */
  const char *state = cancelled ? "cancelled" : failed ? "failed" : "done";
  r = lp_redis_cmdf(&bp->tx, "HSET %s state %s ended %lld", bp->k.meta, state,
                    (long long)lp_broker_ms());
  if (r) freeReplyObject(r);
}

static void bplace_stop(lp_place *p) {
  lp_bplace *bp = (lp_bplace *)p;
  pthread_mutex_lock(&bp->lock);
  atomic_store(&bp->stopping, 1);
  pthread_cond_broadcast(&bp->cond);
  pthread_mutex_unlock(&bp->lock);
  if (bp->threads > 0) pthread_join(bp->sender, NULL);
  /* The receiver may be waiting on the inbox (up to 100 ms): woken now,
   * until it has seen `stopping` (an unblock that comes between two of
   * its reads finds nothing to wake). The sender is gone: tx is free. */
  while (bp->threads > 1 && atomic_load(&bp->rx_id) && bp->tx.c &&
         !atomic_load(&bp->receiver_left)) {
    redisReply *r =
        lp_redis_cmdf(&bp->tx, "CLIENT UNBLOCK %lld", (long long)atomic_load(&bp->rx_id));
    if (!r) break;
    freeReplyObject(r);
    usleep(1000);
  }
  if (bp->threads > 1) pthread_join(bp->receiver, NULL);
  fail_all(bp, "the run was stopped");
  /* A run the broker no longer has has nothing to finish: its workers
   * left it when its keys went. */
  if (bp->tx.c && !atomic_load(&bp->gone)) finish_run(bp);
  /* The run stays readable for a day (luapool status, luapool attach). */
  const char *keys[] = {bp->k.meta, bp->k.src,  bp->k.q,  bp->k.res, bp->k.n,
                        bp->k.ctr,  bp->k.fail, bp->k.wk, bp->inbox};
  for (size_t i = 0; bp->tx.c && i < sizeof keys / sizeof *keys; i++) {
    redisReply *r = lp_redis_cmdf(&bp->tx, "EXPIRE %s 86400", keys[i]);
    if (r) freeReplyObject(r);
  }
  /* So do the inboxes of workers that died serving it (still listed in
   * wk: a worker that closed the run deleted its own). */
  redisReply *wk = bp->tx.c ? lp_redis_cmdf(&bp->tx, "HKEYS %s", bp->k.wk) : NULL;
  for (size_t i = 0; wk && wk->type == REDIS_REPLY_ARRAY && i < wk->elements; i++) {
    char inbox[192];
    lp_runkeys_inbox(&bp->k, wk->element[i]->str, inbox, sizeof inbox);
    redisReply *r = lp_redis_cmdf(&bp->tx, "EXPIRE %s 86400", inbox);
    if (r) freeReplyObject(r);
  }
  if (wk) freeReplyObject(wk);
  if (bp->local > 0) {
    int status;
    /* It leaves by itself once it sees the run over; a moment, then ask. */
    for (int i = 0; i < 200 && waitpid(bp->local, &status, WNOHANG) == 0; i++) usleep(5000);
    if (waitpid(bp->local, &status, WNOHANG) == 0) {
      kill(bp->local, SIGTERM);
      waitpid(bp->local, &status, 0);
    }
  }
  lp_redis_close(&bp->tx);
  lp_redis_close(&bp->rx);
  free(bp->away.slot);
  pthread_mutex_destroy(&bp->lock);
  pthread_cond_destroy(&bp->cond);
  free(bp);
}

static const lp_place_ops bplace_ops = {
    .start = bplace_start,
    .stop = bplace_stop,
    .push = bplace_push,
    .cancel = bplace_cancel,
    .cancel_all = bplace_cancel_all,
    .idle = bplace_idle,
    .totals = bplace_totals,
    .worker_stats = bplace_worker_stats,
};

int lp_broker_attach(luapool *eng) {
  if (!eng->cfg.broker || eng->pools[0].place) return 0;
  lp_bplace *bp = calloc(1, sizeof *bp);
  if (!bp) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  bp->base.ops = &bplace_ops;
  bp->eng = eng;
  pthread_mutex_init(&bp->lock, NULL);
  pthread_cond_init(&bp->cond, NULL);
  eng->pools[0].place = &bp->base; /* stopped and freed at close, started or not */
  eng->pools[0].roots_away = 1;
  return 0;
}

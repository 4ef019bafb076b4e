/*
 * worker.c - `luapool worker --broker URL`: the loop that serves every run
 * on a broker (worker.h has the design). Each turn it finds new runs and
 * ends finished ones, hands what the reader read to the runs' processes
 * (tasks) or back to them (ends of tasks they handed over), reads what the
 * processes answer, commits outcomes in one pipeline, keeps its leases and
 * claims the tasks of workers gone silent.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bplace.h"
#include "proc.h"
#include "timer.h"
#include "wire.h"
#include "worker.h"

#define MAX_RUNS 30 /* runs served at once (the reader's streams: two each) */

static volatile sig_atomic_t stop_asked;
static void on_stop_signal(int sig) {
  (void)sig;
  stop_asked = 1;
}

/* ---- commits ---- */

struct lp_commit {
  struct lp_commit *next;
  lp_wrun *run;
  lp_wexec *x;
  int sent; /* in this flush's FCALLs already */
};

void lp_worker_commit(lp_worker *w, lp_wslot *s, lp_wexec *x) {
  lp_commit *c = malloc(sizeof *c);
  if (!c) {
    lp_wexec_free(x); /* its lease lapses and another worker runs it */
    return;
  }
  /* The outcome: the subtree's records, then the result. */
  if (lp_buf_append(&x->out, x->result.data, x->result.len) != 0) {
    free(c);
    lp_wexec_free(x);
    return;
  }
  c->next = NULL;
  c->sent = 0;
  c->run = s->run;
  c->x = x;
  *w->commits_tail = c;
  w->commits_tail = &c->next;
}

typedef struct lp_sent {
  struct lp_sent *next;
  char *cmd;
  size_t len;
  char run[LP_RUN_ID_LEN + 1]; /* the run it is for, or "" */
} lp_sent;

void lp_worker_send(lp_worker *w, int argc, const char **argv, const size_t *lens) {
  lp_worker_send_for(w, NULL, argc, argv, lens);
}

void lp_worker_send_for(lp_worker *w, const lp_wrun *run, int argc, const char **argv,
                        const size_t *lens) {
  lp_sent *q = malloc(sizeof *q);
  char *cmd = NULL;
  int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (!q || len < 0) {
    free(q);
    free(cmd);
    fprintf(stderr, "luapool worker: out of memory\n");
    return;
  }
  q->next = NULL;
  q->cmd = cmd;
  q->len = (size_t)len;
  snprintf(q->run, sizeof q->run, "%s", run ? run->k.run : "");
  *w->sent_tail = q;
  w->sent_tail = &q->next;
}

/* The loop's connection, opened again after a loss: at most every
 * `backoff` seconds, doubling to 2 s. 0 once it is open. */
int lp_worker_reconnect(lp_worker *w) {
  if (w->r.c) return 0;
  double now = lp_now();
  if (now < w->retry_at) return -1;
  if (lp_redis_open(&w->r, &w->url, 5.0, 1) != 0) {
    if (!w->lost) fprintf(stderr, "luapool worker: %s; trying again\n", w->r.err);
    w->lost = 1;
    w->backoff = w->backoff > 0 ? (w->backoff * 2 < 2 ? w->backoff * 2 : 2) : 0.1;
    w->retry_at = now + w->backoff;
    return -1;
  }
  if (w->lost) fprintf(stderr, "luapool worker: the broker is back\n");
  w->lost = 0;
  w->backoff = 0;
  return 0;
}

/* A run's outcome or task refused by a full broker (maxmemory): the run
 * cannot end, and would run the task again after every lease. It fails,
 * saying why (its submitter hears it from the run's state). */
static void run_full(lp_worker *w, const char *run, const char *why) {
  lp_runkeys k;
  lp_runkeys_init(&k, run);
  /* Not if its keys are gone already (its submitter ended it). */
  redisReply *r = lp_redis_cmdf(&w->r, "EXISTS %s", k.meta);
  int there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
  if (r) freeReplyObject(r);
  if (!there) return;
  char text[600];
  snprintf(text, sizeof text, "the broker is full (maxmemory): %s", why);
  const char *argv[] = {"HSET", k.meta, "state", "failed", "error", text};
  r = lp_redis_cmd(&w->r, 6, argv, NULL);
  if (r) freeReplyObject(r);
}

/* Sends what waits and reads the replies; what got no reply stays. */
static void drain(lp_worker *w) {
  if (!w->sent || lp_worker_reconnect(w) != 0) return;
  int n = 0;
  for (lp_sent *q = w->sent; q; q = q->next)
    if (lp_redis_append_raw(&w->r, q->cmd, q->len) == 0) n++;
  char full[LP_RUN_ID_LEN + 1] = "", why[512] = "";
  for (; n > 0 && w->sent; n--) {
    redisReply *r = lp_redis_reply(&w->r);
    if (!r) break; /* the rest go again once the broker is back */
    if (r->type == REDIS_REPLY_ERROR) {
      fprintf(stderr, "luapool worker: the broker: %s\n", r->str);
      if (strncmp(r->str, "OOM", 3) == 0 && w->sent->run[0]) {
        snprintf(full, sizeof full, "%s", w->sent->run);
        snprintf(why, sizeof why, "%s", r->str);
      }
    }
    freeReplyObject(r);
    lp_sent *q = w->sent;
    w->sent = q->next;
    free(q->cmd);
    free(q);
  }
  if (!w->sent) w->sent_tail = &w->sent;
  if (full[0]) run_full(w, full, why);
}

static void count_run(lp_worker *w, lp_wrun *run);

#define COMMIT_BATCH 64 /* outcomes in one FCALL: lp_commit takes many */

/* Every outcome waiting, in FCALLs of up to COMMIT_BATCH outcomes of one
 * run each, with whatever else was sent: one round trip. */
static void flush_commits(lp_worker *w) {
  static char inbox[COMMIT_BATCH][256];
  const char *argv[8 + 6 * COMMIT_BATCH];
  size_t lens[8 + 6 * COMMIT_BATCH];
  char nkeys[16];
  /* The run's counts go first: whoever reads an outcome finds the work
   * that made it counted. */
  for (lp_commit *c = w->commits; c; c = c->next)
    if (c->run->ran || c->run->made) count_run(w, c->run);
  for (lp_commit *c = w->commits; c; c = c->next) {
    if (c->sent) continue;
    lp_wrun *run = c->run;
    lp_commit *batch[COMMIT_BATCH];
    int m = 0;
    for (lp_commit *d = c; d && m < COMMIT_BATCH; d = d->next)
      if (d->run == run && !d->sent) {
        d->sent = 1;
        batch[m++] = d;
      }
    int a = 0;
    snprintf(nkeys, sizeof nkeys, "%d", 3 + m);
    argv[a++] = "FCALL";
    argv[a++] = "lp_commit";
    argv[a++] = nkeys;
    argv[a++] = run->k.q;
    argv[a++] = run->k.res;
    argv[a++] = run->k.n;
    for (int i = 0; i < m; i++) {
      lp_runkeys_inbox(&run->k, batch[i]->x->owner, inbox[i], sizeof inbox[i]);
      argv[a++] = inbox[i];
    }
    argv[a++] = LP_BROKER_GROUP;
    argv[a++] = w->name;
    for (int i = 0; i < a; i++) lens[i] = strlen(argv[i]);
    for (int i = 0; i < m; i++) {
      lp_wexec *x = batch[i]->x;
      const char *fields[] = {x->msgid, x->fence, x->key, x->out.data ? x->out.data : "",
                              x->failed ? "1" : "0"};
      for (int f = 0; f < 5; f++) {
        argv[a] = fields[f];
        lens[a++] = f == 3 ? x->out.len : strlen(fields[f]);
      }
    }
    lp_worker_send_for(w, run, a, argv, lens);
  }
  drain(w);
  while (w->commits) {
    lp_commit *c = w->commits;
    w->commits = c->next;
    lp_wexec_free(c->x);
    free(c);
  }
  w->commits_tail = &w->commits;
}

/* ---- the runs ---- */

static void free_run(lp_wrun *run) {
  free(run->script);
  free(run->chunkname);
  free(run->slots);
  while (run->exports) {
    lp_wexport *e = run->exports;
    run->exports = e->next;
    free(e->key);
    free(e);
  }
  free(run);
}

static const char *hfield(redisReply *r, const char *name) {
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
    if (strcmp(r->element[i]->str, name) == 0) return r->element[i + 1]->str;
  return NULL;
}

/* Runs seen over. A run that is over never runs again, and lp:runs lists
 * every run of the last day: each look would otherwise read them all. */
static uint64_t run_number(const char *id) {
  char *end;
  uint64_t n = strtoull(id, &end, 16);
  return *end ? 0 : n; /* run ids are random: 0 (not kept) is as good as never */
}

static int seen_over(lp_worker *w, uint64_t n) {
  if (!n || !w->over_cap) return 0;
  for (size_t i = n & (w->over_cap - 1);; i = (i + 1) & (w->over_cap - 1)) {
    if (w->over[i] == n) return 1;
    if (!w->over[i]) return 0;
  }
}

static void mark_over(lp_worker *w, uint64_t n) {
  if (!n || seen_over(w, n)) return;
  if (2 * (w->over_n + 1) > w->over_cap) {
    size_t cap = w->over_cap ? 2 * w->over_cap : 256;
    uint64_t *grown = calloc(cap, sizeof *grown);
    if (!grown) return; /* looked at again next time: slower, not wrong */
    for (size_t j = 0; j < w->over_cap; j++) {
      uint64_t m = w->over[j];
      if (!m) continue;
      size_t i = m & (cap - 1);
      while (grown[i]) i = (i + 1) & (cap - 1);
      grown[i] = m;
    }
    free(w->over);
    w->over = grown;
    w->over_cap = cap;
  }
  size_t i = n & (w->over_cap - 1);
  while (w->over[i]) i = (i + 1) & (w->over_cap - 1);
  w->over[i] = n;
  w->over_n++;
}

/* Run `id`, listed in lp:runs: served from now on if it is running. */
static void join_run(lp_worker *w, const char *id) {
  uint64_t number = run_number(id);
  if (seen_over(w, number)) return;
  lp_wrun *run = calloc(1, sizeof *run);
  if (!run) return;
  lp_runkeys_init(&run->k, id);
  redisReply *meta = lp_redis_cmdf(&w->r, "HGETALL %s", run->k.meta);
  const char *state = hfield(meta, "state");
  if (meta && meta->type == REDIS_REPLY_ARRAY && (!state || strcmp(state, "running") != 0)) {
    mark_over(w, number);
    /* Its keys have expired: it goes from the list too. */
    redisReply *z = meta->elements ? NULL : lp_redis_cmdf(&w->r, "ZREM lp:runs %s", id);
    if (z) freeReplyObject(z);
  }
  redisReply *src =
      state && strcmp(state, "running") == 0 ? lp_redis_cmdf(&w->r, "GET %s", run->k.src) : NULL;
  if (!meta || !src || !state || strcmp(state, "running") != 0 || src->type != REDIS_REPLY_STRING) {
    if (meta) freeReplyObject(meta);
    if (src) freeReplyObject(src);
    free(run);
    return;
  }
  const char *v;
  run->chunkname = strdup((v = hfield(meta, "script")) ? v : "script");
  run->order = (v = hfield(meta, "order")) ? atoi(v) : 0;
  run->retries = (v = hfield(meta, "retries")) ? atoi(v) : 0;
  run->timeout = (v = hfield(meta, "timeout")) ? strtod(v, NULL) : 0;
  run->memory_limit = (v = hfield(meta, "memory_limit")) ? strtoull(v, NULL, 10) : 0;
  run->lease = (v = hfield(meta, "lease")) ? strtod(v, NULL) : 10;
  if (!(run->lease > 0.1)) run->lease = 0.1;
  run->script = malloc(src->len + 1);
  if (run->script) {
    memcpy(run->script, src->str, src->len);
    run->script_len = src->len;
  }
  freeReplyObject(meta);
  freeReplyObject(src);
  lp_runkeys_inbox(&run->k, w->name, run->inbox, sizeof run->inbox);
  /* Known to the run: at its end the submitter waits for this worker's
   * processes to report what they still know (wk: listed while serving). */
  redisReply *j = lp_redis_cmdf(&w->r, "HSET %s %s 0", run->k.wk, w->name);
  if (j) freeReplyObject(j);
  redisReply *g =
      lp_redis_cmdf(&w->r, "XGROUP CREATE %s %s 0 MKSTREAM", run->inbox, LP_BROKER_GROUP);
  if (g) freeReplyObject(g);
  run->nslots = w->processes;
  run->slots = calloc((size_t)run->nslots, sizeof *run->slots);
  if (!run->script || !run->chunkname || !run->slots) {
    free_run(run);
    return;
  }
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    s->run = run;
    s->index = i;
    s->fd = -1;
    lp_buf_init(&s->rbuf);
    lp_buf_init(&s->wbuf);
    if (lp_wslot_start(w, s) != 0) fprintf(stderr, "luapool worker: cannot start a process\n");
  }
  run->next = w->runs;
  w->runs = run;
}

/* Hands back to the run's stream every task its processes hold, begun or
 * not: another worker runs them (execution is at least once; their
 * outcomes commit once). */
static void give_back(lp_worker *w, lp_wrun *run) {
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    while (s->execs) {
      lp_wexec *x = s->execs;
      s->execs = x->next;
      redisReply *r = lp_redis_cmdf(&w->r, "FCALL lp_giveback 1 %s %s %s %s %s", run->k.q,
                                    LP_BROKER_GROUP, w->name, x->msgid, x->fence);
      if (r) freeReplyObject(r);
      lp_wexec_free(x);
    }
    s->nexecs = 0;
  }
}

static void end_run(lp_worker *w, lp_wrun *run, int hand_back) {
  if (hand_back) give_back(w, run);
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    lp_wslot_end(w, s);
    while (s->execs) {
      lp_wexec *x = s->execs;
      s->execs = x->next;
      lp_wexec_free(x);
    }
    lp_buf_free(&s->rbuf);
    lp_buf_free(&s->wbuf);
  }
  /* Its last counts (the processes' last STATS came as they closed). */
  count_run(w, run);
  /* After what the processes reported as they closed (their failures go
   * first, in the same pipeline), and sent until the broker has it: the
   * submitter waits for it. HDEL, not HSET: a full broker still takes it. */
  char qf[128], rf[128];
  snprintf(qf, sizeof qf, "queued:%s", w->name);
  snprintf(rf, sizeof rf, "running:%s", w->name);
  const char *del[] = {"DEL", run->inbox};
  const char *closed[] = {"HDEL", run->k.wk, w->name};
  const char *counts[] = {"HDEL", run->k.n, qf, rf};
  lp_worker_send(w, 2, del, NULL);
  lp_worker_send(w, 3, closed, NULL);
  lp_worker_send(w, 4, counts, NULL);
  /* Outcomes of tasks that ended as the processes closed: nobody needs
   * them (the run is over, or what it had went back), and their commits
   * name the run, which goes. */
  for (lp_commit **p = &w->commits; *p;) {
    lp_commit *c = *p;
    if (c->run != run) {
      p = &c->next;
      continue;
    }
    *p = c->next;
    lp_wexec_free(c->x);
    free(c);
  }
  w->commits_tail = &w->commits;
  while (*w->commits_tail) w->commits_tail = &(*w->commits_tail)->next;
}

/* New runs, and runs that are over (done, cancelled, failed, or gone). */
static void look_for_runs(lp_worker *w) {
  redisReply *r = lp_redis_cmdf(&w->r, "ZRANGE lp:runs 0 -1");
  if (!r) return;
  for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    const char *id = r->element[i]->str;
    if (w->only[0] && strcmp(id, w->only) != 0) continue;
    int known = 0, n = 0;
    for (lp_wrun *run = w->runs; run; run = run->next, n++) known |= strcmp(run->k.run, id) == 0;
    if (!known && n < MAX_RUNS) join_run(w, id);
  }
  freeReplyObject(r);
  for (lp_wrun *run = w->runs; run; run = run->next) {
    redisReply *st = lp_redis_cmdf(&w->r, "HGET %s state", run->k.meta);
    if (!st) return;
    if (st->type != REDIS_REPLY_STRING || strcmp(st->str, "running") != 0) run->over = 1;
    freeReplyObject(st);
  }
}

static void drop_over_runs(lp_worker *w) {
  for (lp_wrun **p = &w->runs; *p;) {
    lp_wrun *run = *p;
    if (!run->over) {
      p = &run->next;
      continue;
    }
    *p = run->next;
    mark_over(w, run_number(run->k.run));
    end_run(w, run, 0);
    free_run(run);
    if (w->only[0]) w->stopping = 1; /* its one run is over */
  }
}

/* ---- leases ---- */

static void renew(lp_worker *w, lp_wrun *run) {
  long n = 0;
  for (int i = 0; i < run->nslots; i++) n += run->slots[i].nexecs;
  if (!n) return;
  const char **argv = malloc(sizeof *argv * (size_t)(6 + 2 * n));
  if (!argv) return;
  int a = 0;
  argv[a++] = "FCALL";
  argv[a++] = "lp_renew";
  argv[a++] = "1";
  argv[a++] = run->k.q;
  argv[a++] = LP_BROKER_GROUP;
  argv[a++] = w->name;
  for (int i = 0; i < run->nslots; i++)
    for (lp_wexec *x = run->slots[i].execs; x; x = x->next) {
      argv[a++] = x->msgid;
      argv[a++] = x->fence;
    }
  redisReply *r = lp_redis_cmd(&w->r, a, argv, NULL);
  free(argv);
  if (!r) return;
  /* Tasks now another worker's: this attempt must not commit, and
   * stops. */
  for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j < r->elements; j++)
    for (int i = 0; i < run->nslots; i++)
      for (lp_wexec *x = run->slots[i].execs; x; x = x->next)
        if (!x->lost && strcmp(x->msgid, r->element[j]->str) == 0) {
          size_t mark;
          x->lost = 1;
          lp_buf *b = &run->slots[i].wbuf;
          if (lp_wire_begin(b, LP_MSG_CANCEL, &mark) == 0 && lp_wire_u64(b, x->id) == 0)
            lp_wire_end(b, mark);
        }
  freeReplyObject(r);
}

static lp_wslot *freest(lp_wrun *run) {
  lp_wslot *best = NULL;
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    if (s->fd >= 0 && s->ready && (!best || s->credits > best->credits)) best = s;
  }
  return best;
}

/* Entries [id, fence, fields] from lp_claim. */
static void claim(lp_worker *w, lp_wrun *run) {
  lp_wslot *s = freest(run);
  if (!s || s->credits <= 0) return;
  char lease[32];
  snprintf(lease, sizeof lease, "%lld", (long long)(run->lease * 1000));
  redisReply *r = lp_redis_cmdf(&w->r, "FCALL lp_claim 1 %s %s %s %s %ld", run->k.q,
                                LP_BROKER_GROUP, w->name, lease, s->credits);
  if (!r) return;
  for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_ARRAY && e->elements == 3)
      lp_wslot_exec(w, s, e->element[0]->str, e->element[1]->str, e->element[2]);
  }
  freeReplyObject(r);
}

/* Another worker is idle: the process of this run with the most tasks
 * waiting hands some over (HUNGRY), at most every 5 ms. */
static void share(lp_worker *w, lp_wrun *run, double now) {
  long credits = 0;
  lp_wslot *busy = NULL;
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    if (s->fd < 0) continue;
    credits += s->credits;
    if (s->queued >= 2 && now - s->asked_at >= 0.005 && (!busy || s->queued > busy->queued))
      busy = s;
  }
  if (now - run->hungry_seen < 0.005) return;
  run->hungry_seen = now;
  char hk[64];
  snprintf(hk, sizeof hk, "lp:{%s}:hungry", run->k.run);
  if (credits >= w->threads && !busy) { /* idle here: say so */
    redisReply *r = lp_redis_cmdf(&w->r, "SET %s %s PX 50", hk, w->name);
    if (r) freeReplyObject(r);
    return;
  }
  if (!busy) return;
  redisReply *r = lp_redis_cmdf(&w->r, "GET %s", hk);
  int hungry = r && r->type == REDIS_REPLY_STRING;
  if (r) freeReplyObject(r);
  if (!hungry) return;
  long n = busy->queued / 2 > 256 ? 256 : busy->queued / 2;
  size_t mark;
  if (lp_wire_begin(&busy->wbuf, LP_MSG_HUNGRY, &mark) == 0 &&
      lp_wire_u64(&busy->wbuf, (uint64_t)n) == 0)
    lp_wire_end(&busy->wbuf, mark);
  busy->asked_at = now;
}

/* ---- the reader ---- */

static void *reader_main(void *arg) {
  lp_worker *w = arg;
  redisReply *id = lp_redis_cmdf(&w->rd, "CLIENT ID");
  if (id && id->type == REDIS_REPLY_INTEGER) w->reader_id = id->integer;
  if (id) freeReplyObject(id);
  const char *argv[8 + 2 * 64];
  char count[24];
  for (;;) {
    pthread_mutex_lock(&w->lock);
    while (w->got && !w->stopping) {
      pthread_mutex_unlock(&w->lock);
      usleep(200);
      pthread_mutex_lock(&w->lock);
    }
    if (w->stopping) {
      pthread_mutex_unlock(&w->lock);
      break;
    }
    int n = w->nstreams, a = 0;
    snprintf(count, sizeof count, "%ld", w->count > 0 ? w->count : 1);
    argv[a++] = "XREADGROUP";
    argv[a++] = "GROUP";
    argv[a++] = LP_BROKER_GROUP;
    argv[a++] = w->name;
    argv[a++] = "COUNT";
    argv[a++] = count;
    argv[a++] = "BLOCK";
    argv[a++] = "100";
    argv[a++] = "STREAMS";
    for (int i = 0; i < n; i++) {
      memcpy(w->reading[i], w->streams[i], sizeof w->reading[i]);
      argv[a++] = w->reading[i];
    }
    /* After a reconnection: the inboxes' pending entries first (from 0);
     * a queue's are tasks already taken, never read twice. */
    int reread = w->reread;
    w->reread = 0;
    for (int i = 0; i < n; i++) argv[a++] = reread && i >= w->nwant ? "0" : ">";
    w->reader_nwant = w->nwant;
    w->reader_blocked = 1;
    pthread_mutex_unlock(&w->lock);
    if (n == 0) {
      usleep(10000);
      continue;
    }
    redisReply *r = lp_redis_cmd(&w->rd, a, argv, NULL);
    pthread_mutex_lock(&w->lock);
    w->reader_blocked = 0;
    pthread_mutex_unlock(&w->lock);
    if (!r) {
      /* The broker is gone: again after a pause, until it is back. What
       * the lost read had taken from the inboxes is read again (their
       * pending entries); tasks it had taken are claimed after the lease. */
      usleep(200000);
      if (lp_redis_open(&w->rd, &w->url, 5.0, 0) == 0) {
        redisReply *id2 = lp_redis_cmdf(&w->rd, "CLIENT ID");
        if (id2 && id2->type == REDIS_REPLY_INTEGER) w->reader_id = id2->integer;
        if (id2) freeReplyObject(id2);
        pthread_mutex_lock(&w->lock);
        w->reread = 1;
        pthread_mutex_unlock(&w->lock);
      }
      continue;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
      /* nil: nothing came. An error: a stream gone (a broker restarted
       * without its data): the loop sees the run gone and makes its wake
       * stream again; meanwhile, no spinning. */
      if (r->type == REDIS_REPLY_ERROR) usleep(50000);
      freeReplyObject(r);
      continue;
    }
    pthread_mutex_lock(&w->lock);
    w->got = r;
    pthread_mutex_unlock(&w->lock);
    uint64_t one = 1;
    ssize_t rc = write(w->wake_fd, &one, sizeof one);
    (void)rc;
  }
  return NULL;
}

/* What the reader reads next: the queues of runs with room here, then
 * every run's inbox. */
static void set_streams(lp_worker *w) {
  pthread_mutex_lock(&w->lock);
  int n = 0;
  long count = 0;
  for (lp_wrun *run = w->runs; run && n < 64; run = run->next) {
    if (run->over) continue;
    lp_wslot *s = freest(run);
    if (s && s->credits > 0) {
      snprintf(w->streams[n++], sizeof w->streams[0], "%s", run->k.q);
      if (s->credits > count) count = s->credits;
    }
  }
  w->nwant = n;
  for (lp_wrun *run = w->runs; run && n < 63; run = run->next)
    if (!run->over) snprintf(w->streams[n++], sizeof w->streams[0], "%s", run->inbox);
  snprintf(w->streams[n++], sizeof w->streams[0], "%s", w->wake);
  w->nstreams = n;
  w->count = count > 0 ? count : 512;
  pthread_mutex_unlock(&w->lock);
  /* The reader waits without a queue that has room now: woken, so that it
   * reads it. An unblock that reaches Redis before the reader's command
   * wakes nothing (the reader would wait out its block): again, until one
   * wakes it or it has read with the new streams. */
  for (int tries = 0; tries < 100 && atomic_load(&w->reader_id); tries++) {
    pthread_mutex_lock(&w->lock);
    int stale = w->reader_blocked && w->nwant > w->reader_nwant;
    pthread_mutex_unlock(&w->lock);
    if (!stale) break;
    redisReply *r =
        lp_redis_cmdf(&w->r, "CLIENT UNBLOCK %lld", (long long)atomic_load(&w->reader_id));
    int woke = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (r) freeReplyObject(r);
    if (woke || !r) break;
    usleep(50);
  }
}

static lp_wrun *run_of_stream(lp_worker *w, const char *name, int *inbox) {
  for (lp_wrun *run = w->runs; run; run = run->next) {
    if (strcmp(name, run->k.q) == 0) {
      *inbox = 0;
      return run;
    }
    if (strcmp(name, run->inbox) == 0) {
      *inbox = 1;
      return run;
    }
  }
  return NULL;
}

static const char *efield(redisReply *f, const char *name, size_t *len) {
  for (size_t i = 0; f && f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2)
    if (strcmp(f->element[i]->str, name) == 0) {
      *len = f->element[i + 1]->len;
      return f->element[i + 1]->str;
    }
  return NULL;
}

static void take_read(lp_worker *w, redisReply *r) {
  for (size_t s = 0; s < r->elements; s++) {
    redisReply *st = r->element[s];
    if (st->type != REDIS_REPLY_ARRAY || st->elements < 2) continue;
    int inbox = 0;
    lp_wrun *run = run_of_stream(w, st->element[0]->str, &inbox);
    redisReply *entries = st->element[1];
    if (strcmp(st->element[0]->str, w->wake) == 0) { /* a run began or is ending */
      w->look_now = 1;
      for (size_t e = 0; e < entries->elements; e++) {
        redisReply *en = entries->element[e];
        if (en->type != REDIS_REPLY_ARRAY || !en->elements) continue;
        redisReply *a =
            lp_redis_cmdf(&w->r, "XACK %s %s %s", w->wake, LP_BROKER_GROUP, en->element[0]->str);
        if (a) freeReplyObject(a);
        a = lp_redis_cmdf(&w->r, "XDEL %s %s", w->wake, en->element[0]->str);
        if (a) freeReplyObject(a);
      }
      continue;
    }
    for (size_t e = 0; e < entries->elements; e++) {
      redisReply *en = entries->element[e];
      if (en->type != REDIS_REPLY_ARRAY || en->elements < 2) continue;
      const char *msgid = en->element[0]->str;
      if (!run) continue;
      if (inbox) {
        size_t klen = 0, olen = 0;
        const char *key = efield(en->element[1], "k", &klen);
        const char *out = efield(en->element[1], "r", &olen);
        if (key && out) lp_wslot_relay(w, run, key, out, olen);
        const char *ack[] = {"XACK", run->inbox, LP_BROKER_GROUP, msgid};
        const char *del[] = {"XDEL", run->inbox, msgid};
        lp_worker_send(w, 4, ack, NULL);
        lp_worker_send(w, 3, del, NULL);
      } else {
        lp_wslot *slot = freest(run);
        if (slot) lp_wslot_exec(w, slot, msgid, "1", en->element[1]);
        /* No process to run it: its lease lapses and it runs elsewhere. */
      }
    }
  }
}

/* ---- the loop ---- */

static void slot_died(lp_worker *w, lp_wslot *s) {
  lp_wslot_end(w, s);
  /* Tasks it had: back to the stream, to run again (here or elsewhere). */
  while (s->execs) {
    lp_wexec *x = s->execs;
    s->execs = x->next;
    redisReply *r = lp_redis_cmdf(&w->r, "FCALL lp_giveback 1 %s %s %s %s %s", s->run->k.q,
                                  LP_BROKER_GROUP, w->name, x->msgid, x->fence);
    if (r) freeReplyObject(r);
    lp_wexec_free(x);
  }
  s->nexecs = 0;
  if (!s->run->over && !w->stopping && lp_wslot_start(w, s) != 0)
    fprintf(stderr, "luapool worker: cannot start a process\n");
}

static void heartbeat(lp_worker *w) {
  char host[64] = "";
  gethostname(host, sizeof host - 1);
  char info[256];
  snprintf(info, sizeof info, "%s %d %d %lld %llu", host, (int)getpid(), w->processes * w->threads,
           (long long)lp_broker_ms(), (unsigned long long)w->ran);
  redisReply *r = lp_redis_cmdf(&w->r, "HSET lp:workers %s %s", w->name, info);
  if (r) freeReplyObject(r);
  /* Its wake stream, made again if a broker restarted without it. */
  r = lp_redis_cmdf(&w->r, "XGROUP CREATE %s %s $ MKSTREAM", w->wake, LP_BROKER_GROUP);
  if (r) freeReplyObject(r);
}

/* What this worker's processes did for each run since the last time, for
 * `luapool status`: tasks run and failed (summed over workers), and
 * queued and running now (a field per worker). */
static void count_run(lp_worker *w, lp_wrun *run) {
  {
    long queued = 0, running = 0;
    for (int i = 0; i < run->nslots; i++) {
      queued += run->slots[i].queued;
      running += run->slots[i].running;
    }
    char ran[24], failed[24], made[24], fin[24], q[24], rn[24], qf[128], rf[128];
    snprintf(ran, sizeof ran, "%llu", (unsigned long long)run->ran);
    snprintf(failed, sizeof failed, "%llu", (unsigned long long)run->failed);
    snprintf(made, sizeof made, "%llu", (unsigned long long)run->made);
    snprintf(fin, sizeof fin, "%llu", (unsigned long long)run->fin);
    snprintf(q, sizeof q, "%ld", queued);
    snprintf(rn, sizeof rn, "%ld", running);
    snprintf(qf, sizeof qf, "queued:%s", w->name);
    snprintf(rf, sizeof rf, "running:%s", w->name);
    const char *a[] = {"HINCRBY", run->k.n, "done", ran};
    const char *b[] = {"HINCRBY", run->k.n, "failed", failed};
    const char *c[] = {"HSET", run->k.n, qf, q, rf, rn};
    const char *d[] = {"HINCRBY", run->k.n, "made", made};
    const char *e[] = {"HINCRBY", run->k.n, "fin", fin};
    if (run->ran) lp_worker_send(w, 4, a, NULL);
    if (run->failed) lp_worker_send(w, 4, b, NULL);
    if (run->made) lp_worker_send(w, 4, d, NULL);
    if (run->fin) lp_worker_send(w, 4, e, NULL);
    lp_worker_send(w, 6, c, NULL);
    run->ran = run->failed = run->made = run->fin = 0;
  }
}

static void count(lp_worker *w) {
  for (lp_wrun *run = w->runs; run; run = run->next) count_run(w, run);
}

static int serve(lp_worker *w) {
  double last_look = -1, last_beat = -1;
  while (!w->stopping && !stop_asked) {
    double now = lp_now();
    if (lp_worker_reconnect(w) != 0) {
      /* Without the broker the processes wait (their frames wait in their
       * sockets); so do their outcomes. */
      struct pollfd none[1];
      poll(none, 0, 50);
      continue;
    }
    if (now - last_look >= 0.2 || w->look_now) {
      w->look_now = 0;
      look_for_runs(w);
      drop_over_runs(w);
      last_look = now;
      if (w->stopping) break;
    }
    if (now - last_beat >= 0.5) {
      heartbeat(w);
      count(w);
      last_beat = now;
    }
    for (lp_wrun *run = w->runs; run; run = run->next) {
      if (now - run->renewed >= run->lease / 3) {
        renew(w, run);
        run->renewed = now;
      }
      if (now - run->claimed >= run->lease / 2) {
        claim(w, run);
        run->claimed = now;
      }
      share(w, run, now);
    }
    set_streams(w);
    struct pollfd p[1 + MAX_RUNS * 8];
    lp_wslot *who[1 + MAX_RUNS * 8];
    int np = 0;
    p[np].fd = w->wake_fd;
    p[np].events = POLLIN;
    who[np++] = NULL;
    for (lp_wrun *run = w->runs; run; run = run->next)
      for (int i = 0; i < run->nslots && np < 1 + MAX_RUNS * 8; i++)
        if (run->slots[i].fd >= 0) {
          p[np].fd = run->slots[i].fd;
          p[np].events = POLLIN;
          who[np++] = &run->slots[i];
        }
    poll(p, (nfds_t)np, 10);
    if (p[0].revents & POLLIN) {
      uint64_t v;
      ssize_t rc = read(w->wake_fd, &v, sizeof v);
      (void)rc;
    }
    pthread_mutex_lock(&w->lock);
    redisReply *got = w->got;
    w->got = NULL;
    pthread_mutex_unlock(&w->lock);
    if (got) {
      take_read(w, got);
      freeReplyObject(got);
    }
    for (int i = 1; i < np; i++)
      if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) && lp_wslot_read(w, who[i]) != 0)
        slot_died(w, who[i]);
    flush_commits(w);
    for (lp_wrun *run = w->runs; run; run = run->next)
      for (int i = 0; i < run->nslots; i++)
        if (lp_wslot_flush(&run->slots[i]) != 0) slot_died(w, &run->slots[i]);
  }
  return 0;
}

int lp_broker_worker(const char *url, int processes, int threads, const char *only, char *err,
                     size_t errlen) {
  lp_worker *w = calloc(1, sizeof *w);
  if (!w) {
    snprintf(err, errlen, "out of memory");
    return 1;
  }
  if (lp_broker_url_parse(url, &w->url, err, errlen) != 0) {
    free(w);
    return 2;
  }
  w->sent_tail = &w->sent;
  w->commits_tail = &w->commits;
  w->processes = processes > 0 ? processes : 1;
  w->threads = threads > 0 ? threads : 1;
  if (only) snprintf(w->only, sizeof w->only, "%s", only);
  lp_exe_worker(w->exe, sizeof w->exe);
  lp_broker_name(w->name, sizeof w->name);
  if (lp_redis_open(&w->r, &w->url, 5.0, 1) != 0 || lp_redis_open(&w->rd, &w->url, 5.0, 0) != 0) {
    snprintf(err, errlen, "%s", w->r.err[0] ? w->r.err : w->rd.err);
    lp_redis_close(&w->r);
    free(w);
    return 1;
  }
  snprintf(w->wake, sizeof w->wake, "lp:wake:%s", w->name);
  heartbeat(w); /* known to submitters from now on */
  pthread_mutex_init(&w->lock, NULL);
  w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  pthread_t reader;
  int reading = pthread_create(&reader, NULL, reader_main, w) == 0;
  serve(w);
  pthread_mutex_lock(&w->lock);
  w->stopping = 1;
  pthread_mutex_unlock(&w->lock);
  /* What it holds goes back now, not after a lease. */
  while (w->runs) {
    lp_wrun *run = w->runs;
    w->runs = run->next;
    end_run(w, run, 1);
    free_run(run);
  }
  flush_commits(w);
  drain(w);
  while (w->sent) {
    lp_sent *q = w->sent;
    w->sent = q->next;
    free(q->cmd);
    free(q);
  }
  redisReply *r = lp_redis_cmdf(&w->r, "HDEL lp:workers %s", w->name);
  if (r) freeReplyObject(r);
  r = lp_redis_cmdf(&w->r, "DEL %s", w->wake);
  if (r) freeReplyObject(r);
  if (reading) {
    if (atomic_load(&w->reader_id)) {
      r = lp_redis_cmdf(&w->r, "CLIENT UNBLOCK %lld", (long long)atomic_load(&w->reader_id));
      if (r) freeReplyObject(r);
    }
    pthread_join(reader, NULL);
  }
  if (w->got) freeReplyObject(w->got);
  free(w->over);
  lp_redis_close(&w->r);
  lp_redis_close(&w->rd);
  close(w->wake_fd);
  pthread_mutex_destroy(&w->lock);
  free(w);
  return 0;
}

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
  lp_worker_count_run(w, run);
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
  lp_worker_drop_commits(w, run);
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

/* Entries [id, fence, fields] from lp_claim. */
static void claim(lp_worker *w, lp_wrun *run) {
  lp_wslot *s = lp_wrun_freest(run);
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

static void count(lp_worker *w) {
  for (lp_wrun *run = w->runs; run; run = run->next) lp_worker_count_run(w, run);
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
    lp_worker_set_streams(w);
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
      lp_worker_take_read(w, got);
      freeReplyObject(got);
    }
    for (int i = 1; i < np; i++)
      if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) && lp_wslot_read(w, who[i]) != 0)
        slot_died(w, who[i]);
    lp_worker_flush(w);
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
  int reading = pthread_create(&reader, NULL, lp_worker_reader, w) == 0;
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
  lp_worker_flush(w);
  lp_worker_drain(w);
  lp_worker_drop_sent(w); /* what the broker never took */
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

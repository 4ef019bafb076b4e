/*
 * wsend.c - what a broker's worker sends that needs no answer (commits of
 * outcomes, exports, acknowledgements, counts): queued in the protocol's
 * bytes, sent in the loop's one pipeline a turn, and kept until their
 * replies are in, so a lost connection loses none of them; and the loop's
 * connection opened again after a loss.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "timer.h"
#include "wire.h"
#include "worker.h"

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
void lp_worker_drain(lp_worker *w) {
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

#define COMMIT_BATCH 64 /* outcomes in one FCALL: lp_commit takes many */

/* Every outcome waiting, in FCALLs of up to COMMIT_BATCH outcomes of one
 * run each, with whatever else was sent: one round trip. */
void lp_worker_flush(lp_worker *w) {
  static char inbox[COMMIT_BATCH][256];
  const char *argv[8 + 6 * COMMIT_BATCH];
  size_t lens[8 + 6 * COMMIT_BATCH];
  char nkeys[16];
  /* The run's counts go first: whoever reads an outcome finds the work
   * that made it counted. */
  for (lp_commit *c = w->commits; c; c = c->next)
    if (c->run->ran || c->run->made) lp_worker_count_run(w, c->run);
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
  lp_worker_drain(w);
  while (w->commits) {
    lp_commit *c = w->commits;
    w->commits = c->next;
    lp_wexec_free(c->x);
    free(c);
  }
  w->commits_tail = &w->commits;
}

/* Drops the outcomes queued for run (it is going). */
void lp_worker_drop_commits(lp_worker *w, const lp_wrun *run) {
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

/* What this worker's processes did for each run since the last time, for
 * `luapool status`: tasks run and failed (summed over workers), and
 * queued and running now (a field per worker). */
void lp_worker_count_run(lp_worker *w, lp_wrun *run) {
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

void lp_worker_drop_sent(lp_worker *w) {
  while (w->sent) {
    lp_sent *q = w->sent;
    w->sent = q->next;
    free(q->cmd);
    free(q);
  }
  w->sent_tail = &w->sent;
}

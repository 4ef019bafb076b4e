/*
 * wread.c - the reader of a broker's worker: a thread that blocks on the
 * streams (the queues of runs with room, every run's inbox, the worker's
 * wake stream) and hands what it read to the loop, which gives tasks to the
 * runs' processes and outcomes back to the processes that handed them over.
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

lp_wslot *lp_wrun_freest(lp_wrun *run) {
  lp_wslot *best = NULL;
  for (int i = 0; i < run->nslots; i++) {
    lp_wslot *s = &run->slots[i];
    if (s->fd >= 0 && s->ready && (!best || s->credits > best->credits)) best = s;
  }
  return best;
}

/* ---- the reader ---- */

void *lp_worker_reader(void *arg) {
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
void lp_worker_set_streams(lp_worker *w) {
  pthread_mutex_lock(&w->lock);
  int n = 0;
  long count = 0;
  for (lp_wrun *run = w->runs; run && n < 64; run = run->next) {
    if (run->over) continue;
    lp_wslot *s = lp_wrun_freest(run);
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

void lp_worker_take_read(lp_worker *w, redisReply *r) {
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
        lp_wslot *slot = lp_wrun_freest(run);
        if (slot) lp_wslot_exec(w, slot, msgid, "1", en->element[1]);
        /* No process to run it: its lease lapses and it runs elsewhere. */
      }
    }
  }
}

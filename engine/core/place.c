/*
 * place.c - the engine's side of the seam (place.h): every place of the
 * engine's pools, asked through their tables. The core calls these and
 * never a place's own code.
 */
#include <string.h>

#include "engine.h"

int lp_place_push(luapool *eng, lp_task *t) {
  lp_place *p = eng->pools[t->pool].place;
  return p->ops->push(p, t);
}

int lp_place_hold(luapool *eng, int pool, lp_task *self, long bound) {
  lp_place *p = eng->pools[pool].place;
  return p->ops->hold ? p->ops->hold(p, self, bound) : 0;
}

void lp_place_cancel(luapool *eng, lp_task *t) {
  /* A task an engine with an uplink handed upstream is held there. */
  if (eng->up) {
    eng->up->ops->cancel(eng->up, t);
    return;
  }
  lp_place *p = eng->pools ? eng->pools[t->pool].place : NULL;
  if (p) p->ops->cancel(p, t);
}

int lp_places_start(luapool *eng) {
  for (int i = 0; i < eng->npools; i++) {
    lp_place *p = eng->pools[i].place;
    int rc = p ? p->ops->start(p) : 0;
    if (rc != 0) return rc;
  }
  return 0;
}

void lp_places_stop(luapool *eng) {
  for (int i = 0; i < eng->npools; i++) {
    lp_place *p = eng->pools[i].place;
    if (p) p->ops->stop(p); /* its threads may look it up until they end */
    eng->pools[i].place = NULL;
  }
}

void lp_places_cancel_all(luapool *eng) {
  for (int i = 0; i < eng->npools; i++)
    if (eng->pools[i].place) eng->pools[i].place->ops->cancel_all(eng->pools[i].place);
}

int lp_places_idle(luapool *eng) {
  for (int i = 0; i < eng->npools; i++)
    if (eng->pools[i].place && !eng->pools[i].place->ops->idle(eng->pools[i].place)) return 0;
  return 1;
}

void lp_places_totals(luapool *eng, lp_place_totals *out) {
  memset(out, 0, sizeof *out);
  for (int i = 0; eng->pools && i < eng->npools; i++)
    if (eng->pools[i].place) eng->pools[i].place->ops->totals(eng->pools[i].place, out);
}

int lp_places_worker_stats(luapool *eng, struct luapool_worker_stats *out, int n) {
  int k = 0;
  for (int i = 0; eng->pools && i < eng->npools; i++) {
    lp_place *p = eng->pools[i].place;
    int room = k < n ? n - k : 0;
    if (p) k += p->ops->worker_stats(p, out + (n - room), room);
  }
  return k;
}

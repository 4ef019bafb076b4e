/*
 * attach.c - what `luapool attach RUN --broker URL` needs to know of a run
 * before it opens an engine attached to it: its order, its script's name
 * and source (the engine runs nothing of it, but its report and its
 * messages are the run's).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "attach.h"
#include "broker.h"
#include "luapool.h"

static const char *hfield(redisReply *r, const char *name) {
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
    if (r->element[i]->str && strcmp(r->element[i]->str, name) == 0) return r->element[i + 1]->str;
  return NULL;
}

int lp_attach_fetch(const char *url, const char *run, lp_attach_info *out, char *err, size_t n) {
  memset(out, 0, sizeof *out);
  lp_broker_url u;
  if (lp_broker_url_parse(url, &u, err, n) != 0) return 2;
  size_t len = strlen(run);
  if (len != LP_RUN_ID_LEN || strspn(run, "0123456789abcdef") != len) {
    snprintf(err, n, "'%s' is not a run id (16 hex digits, as luapool status lists them)", run);
    return 2;
  }
  lp_redis r;
  if (lp_redis_open(&r, &u, 5.0, 0) != 0) {
    snprintf(err, n, "%s", r.err);
    return 1;
  }
  lp_runkeys k;
  lp_runkeys_init(&k, run);
  redisReply *meta = lp_redis_cmdf(&r, "HGETALL %s", k.meta);
  redisReply *src = meta ? lp_redis_cmdf(&r, "GET %s", k.src) : NULL;
  int rc = 0;
  const char *order = hfield(meta, "order"), *script = hfield(meta, "script");
  if (!meta || !src) {
    snprintf(err, n, "%s", r.err);
    rc = 1;
  } else if (!order || src->type != REDIS_REPLY_STRING) {
    snprintf(err, n, "no run %s on the broker (luapool status lists them)", run);
    rc = 2;
  } else if (!(out->chunkname = strdup(script ? script : "=script")) ||
             !(out->source = malloc(src->len + 1))) {
    snprintf(err, n, "out of memory");
    rc = 1;
  } else {
    memcpy(out->source, src->str, src->len);
    out->source[src->len] = 0;
    out->source_len = src->len;
    out->order = atoi(order);
    if (out->order < LUAPOOL_ORDER_TREE || out->order > LUAPOOL_ORDER_COMPLETION)
      out->order = LUAPOOL_ORDER_TREE;
  }
  if (meta) freeReplyObject(meta);
  if (src) freeReplyObject(src);
  lp_redis_close(&r);
  if (rc) lp_attach_free(out);
  return rc;
}

void lp_attach_free(lp_attach_info *a) {
  free(a->chunkname);
  free(a->source);
  memset(a, 0, sizeof *a);
}

/*
 * luamod_records.c - the records and failure reports of the host module's
 * pool: the engine's callbacks copy them into C queues (struct pool), and
 * pool:records() and pool:wait() drain those from Lua.
 *
 * The callbacks run on the host thread, inside a wait of the engine's (a
 * get, a wait, as_completed's), while Lua code is running a C function of
 * this module: they only copy, so no Lua code runs inside a callback and no
 * Lua error can unwind through the engine.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "luamod.h"

void lp_luamod_on_record(void *ud, const luapool_record *rec) {
  pool *p = ud;
  size_t nl = strlen(rec->name);
  rec_node *n = malloc(sizeof *n + nl + rec->text_len + rec->value_len);
  if (!n) {
    p->lost++;
    return;
  }
  n->next = NULL;
  n->kind = rec->kind;
  n->task = rec->task;
  n->priority = rec->priority;
  n->name_len = nl;
  n->text_len = rec->text_len;
  n->value_len = rec->kind == LUAPOOL_RECORD_EMIT ? rec->value_len : 0;
  memcpy(n->data, rec->name, nl);
  memcpy(n->data + nl, rec->text, rec->text_len);
  if (n->value_len) memcpy(n->data + nl + n->text_len, rec->value, n->value_len);
  if (p->tail)
    p->tail->next = n;
  else
    p->head = n;
  p->tail = n;
  p->qbytes += sizeof *n + nl + rec->text_len + n->value_len;
  /* A records loop takes no more than the bound at a time; wait(), get()
   * and as_completed take all (nobody reads the queue until they return,
   * and what they wait for may wait for room). */
  if (p->following && p->qbytes > p->hold) lp_report_pause(&p->lp->report);
}

void lp_luamod_on_failure(void *ud, const char *message) {
  pool *p = ud;
  if (p->failures.len) lp_buf_append(&p->failures, "\n", 1);
  lp_buf_append(&p->failures, message, strlen(message));
}

static const char *const kinds[] = {"emit", "print"};

static int has_record(void *ud) { return ((pool *)ud)->head != NULL; }

/* The iterator: the next record as {value, text, kind, task, name,
 * priority}, or nil when none is left. Following (records{wait = true}),
 * it waits for the next while tasks run: the engine then hands records
 * over only as fast as the loop takes them, and its tasks wait for room
 * past the memory bound (hold), so a run of any output fits. */
static int records_next(lua_State *L) {
  pool *p = lua_touserdata(L, lua_upvalueindex(1));
  if (!p->head && lua_toboolean(L, lua_upvalueindex(2)) && p->lp) {
    p->following = 1;
    lp_engine_wait(p->lp, -1, has_record, p); /* returns at once when no task is left */
    p->following = 0;
  }
  rec_node *n = p->head;
  if (!n) return 0;
  lua_createtable(L, 0, 6);
  const char *text = n->data + n->name_len;
  if (n->kind == LUAPOOL_RECORD_EMIT) {
    int nv = 0;
    char err[256];
    lp_pack_ctx ctx = {NULL, NULL, NULL, 1};
    int top = lua_gettop(L);
    if (lp_unpack_values(L, text + n->text_len, n->value_len, &ctx, &nv, err, sizeof err) != 0)
      lua_pushnil(L);
    lua_settop(L, top + 1);
  } else {
    lua_pushlstring(L, text, n->text_len);
  }
  lua_setfield(L, -2, "value");
  lua_pushlstring(L, text, n->text_len);
  lua_setfield(L, -2, "text");
  lua_pushstring(L, kinds[n->kind == LUAPOOL_RECORD_PRINT]);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, (lua_Integer)n->task);
  lua_setfield(L, -2, "task");
  lua_pushlstring(L, n->data, n->name_len);
  lua_setfield(L, -2, "name");
  lua_pushnumber(L, n->priority);
  lua_setfield(L, -2, "priority");
  /* Taken off the queue only now: a memory error above leaves it there. */
  p->head = n->next;
  if (!p->head) p->tail = NULL;
  p->qbytes -= sizeof *n + n->name_len + n->text_len + n->value_len;
  free(n);
  return 1;
}

/* pool:records([{wait = true}]): collects what the engine can deliver now
 * (without waiting), then iterates over every record delivered so far;
 * with wait, over every record until no task is left. */
int lp_luamod_records(lua_State *L) {
  pool *p = lp_luamod_pool(L, "pool:records");
  int follow = 0;
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"wait", NULL};
    if (!lua_istable(L, 2))
      return luaL_error(L, "pool:records: argument 1: options table expected, got %s",
                        luaL_typename(L, 2));
    lp_luamod_check_keys(L, 2, "pool:records", known);
    lua_getfield(L, 2, "wait");
    follow = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (p->lp) {
    p->following = 1; /* a loop takes these now: the bound's worth at most */
    luapool_wait(p->lp, 0);
    p->following = 0;
  }
  lua_pushvalue(L, 1);
  lua_pushboolean(L, follow);
  lua_pushcclosure(L, records_next, 2);
  return 1;
}

void lp_luamod_free_records(pool *p) {
  while (p->head) {
    rec_node *n = p->head;
    p->head = n->next;
    free(n);
  }
  p->tail = NULL;
  p->qbytes = 0;
}

/*
 * emit.c - what a task tells the run and asks of it: records (luapool.emit
 * with a value, print with text), which go into the report in tree order
 * (report.c), and luapool.self, the running task's own figures.
 */
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "vm.h"

/* ---- records ---- */

static int room_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = lp_worker_of(L)->current;
  (void)status, (void)ctx;
  lp_worker_of(L)->room_waits--;
  lp_lib_resumed(L, self);
  lp_lib_check_cancelled(L, self);
  return 0;
}

/* The records in memory are past the bound and this task's last one waits
 * for the output: the task waits until the host has caught up, without
 * holding its worker (hold.c). Where it cannot wait (inside a coroutine
 * of its own, a sequential run), it goes on: a sequential run hands its
 * records on at once instead. */
static int wait_for_room(lua_State *L, lp_task *self) {
  lp_worker *w = lp_worker_of(L);
  lp_report *r = &w->eng->report;
  if (w->eng->inline_mode) {
    lp_report_deliver(r, 0);
    return 0;
  }
  if (L != self->co || !lua_isyieldable(L)) return 0;
  lp_task_arm(self);
  w->room_waits++; /* it starts no new task meanwhile (pool.c) */
  lp_hold_wait(r, self);
  return lp_lib_suspend(L, self, -1, 0, room_k);
}

static int l_emit(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.emit");
  lp_worker *w = lp_worker_of(L);
  luaL_checkany(L, 1);
  double prio = self->priority;
  if (!lua_isnoneornil(L, 2)) prio = luaL_checknumber(L, 2);
  lp_buf b;
  lp_buf_init(&b);
  char err[320];
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  if (lp_pack_values(L, 1, 1, &b, &ctx, err, sizeof err) != 0)
    return luaL_error(L, "luapool.emit: %s", err);
  lp_record *rec = lp_record_new(LUAPOOL_RECORD_EMIT, self, prio, b.data, b.len);
  lp_buf_free(&b);
  if (!rec) return luaL_error(L, "luapool.emit: out of memory");
  if (lp_report_add(&w->eng->report, self, rec)) return wait_for_room(L, self);
  return 0;
}

/* print() inside a task makes a text record; outside a task (the script's
 * top level) it writes to stderr, so stdout carries only the report. */
static int l_print(lua_State *L) {
  lp_worker *w = lp_worker_of(L);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  if (!w || !w->current) {
    fprintf(stderr, "%s\n", s);
    return 0;
  }
  lp_task *self = w->current;
  lp_record *rec = lp_record_new(LUAPOOL_RECORD_PRINT, self, self->priority, s, len);
  if (!rec) return luaL_error(L, "print: out of memory");
  if (lp_report_add(&w->eng->report, self, rec)) return wait_for_room(L, self);
  return 0;
}

/* ---- self ---- */

static int l_self(lua_State *L) {
  lp_task *t = lp_lib_running(L, "luapool.self");
  lp_worker *w = lp_worker_of(L);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)t->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, lp_names_get(&w->eng->names, t->fn));
  lua_setfield(L, -2, "name");
  lua_pushstring(L, w->eng->pools[t->pool].name);
  lua_setfield(L, -2, "pool");
  lua_pushinteger(L, w->index + 1);
  lua_setfield(L, -2, "worker");
  lua_pushinteger(L, (lua_Integer)getpid());
  lua_setfield(L, -2, "pid");
  lua_pushinteger(L, t->depth);
  lua_setfield(L, -2, "depth");
  lua_Number p = t->priority;
  if (p == floor(p) && fabs(p) < 9e15)
    lua_pushinteger(L, (lua_Integer)p);
  else
    lua_pushnumber(L, p);
  lua_setfield(L, -2, "priority");
  return 1;
}

void lp_emit_open(lua_State *L) {
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
}

void lp_emit_register(lua_State *L) {
  static const luaL_Reg funcs[] = {{"emit", l_emit}, {"self", l_self}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}

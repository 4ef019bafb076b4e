/*
 * fail.c - how a task's end reads when it did not return: a failed task's
 * message ("task 'NAME' (id N) failed: MSG" and the traceback), the
 * one-line summary of its arguments kept for the report of a failure
 * nobody awaited (lp_task.failnote), and a cancelled task's text.
 *
 * Everything here runs on the worker that ran the task, in its own Lua
 * state, each piece under lua_pcall: building the text may run out of
 * memory, and then a shorter text made without Lua stands in.
 */
#include "fail.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "pool.h"
#include "value.h"

/* Protected: builds "task 'NAME' (id N) failed: MSG\n<traceback>" from the
 * error object (1) and the dead coroutine (2). */
static int format_failure(lua_State *L) {
  lp_worker *w = lp_worker_of(L);
  lp_task *t = lua_touserdata(L, 3);
  lua_State *co = lua_tothread(L, 2);
  const char *msg = luaL_tolstring(L, 1, NULL);
  /* An error re-raised from a child's get() already has its traceback;
   * ours follows it. */
  luaL_traceback(L, co, NULL, 0);
  lua_pushfstring(L, "task '%s' (id %I) failed: %s\n%s", lp_names_get(&w->eng->names, t->fn),
                  (lua_Integer)t->id, msg, lua_tostring(L, -1));
  return 1;
}

void lp_fail_text(lp_worker *w, lp_task *t, const char *text, size_t len) {
  lp_buf msg;
  lp_buf_init(&msg);
  if (lp_pack_begin(&msg, 1) != 0 || lp_pack_put_string(&msg, text, len) != 0) lp_buf_reset(&msg);
  int cancelled = lp_task_cancelled(t);
  if (!cancelled) {
    lp_stats_inc(&w->stats.failed);
    t->failnote = lp_value_summary(t->args.data, t->args.len);
  }
  lp_task_finish(t, cancelled ? LP_TASK_CANCELLED : LP_TASK_FAILED, &msg);
  lp_buf_free(&msg);
}

void lp_fail_task(lp_worker *w, lp_task *t, lua_State *co) {
  lua_State *L = w->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, format_failure);
  if (co) {
    lua_xmove(co, L, 1); /* the error object */
    lua_pushthread(co);
    lua_xmove(co, L, 1);
  } else {
    lua_pushstring(L, "could not start");
    lua_pushnil(L);
  }
  lua_pushlightuserdata(L, t);
  char fallback[512];
  const char *err = co ? lua_tostring(L, -3) : NULL; /* a string error needs no memory to read */
  snprintf(fallback, sizeof fallback, "task '%s' (id %llu) failed: %s",
           lp_names_get(&w->eng->names, t->fn), (unsigned long long)t->id,
           err ? err : "(its message could not be built)");
  const char *text = fallback;
  size_t len = strlen(text);
  if (lua_pcall(L, 3, 1, 0) == LUA_OK) text = lua_tolstring(L, -1, &len);
  lp_fail_text(w, t, text, len);
  lua_settop(L, top);
}

void lp_fail_cancel(lp_worker *w, lp_task *t) {
  char text[256];
  int n = snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled",
                   lp_names_get(&w->eng->names, t->fn), (unsigned long long)t->id);
  lp_buf msg;
  lp_buf_init(&msg);
  if (lp_pack_begin(&msg, 1) != 0 || lp_pack_put_string(&msg, text, (size_t)n) != 0)
    lp_buf_reset(&msg);
  lp_task_finish(t, LP_TASK_CANCELLED, &msg);
  lp_buf_free(&msg);
}

/*
 * record.c - a record: what a task's emit() or print() makes, from the
 * moment it is made to the moment the host has it.
 *
 * A record is made by the worker running its task (lp_record_new), waits
 * in its task's output sequence or the completion queue (report.c, which
 * orders records), and is handed to the host's on_record callback by
 * lp_record_deliver, on the host thread, as text and, with json_records,
 * JSON. Values that are not a scalar or a single string are turned into
 * text by scripts/report.lua, run in a Lua state of the host's own
 * (lp_report.fmt, made on first use, host-only). A task's records kept for
 * a retry (lp_task.held) are a list freed by lp_record_free_list.
 */
#include "report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "engine.h"
#include "pack.h"
#include "task.h"

lp_record *lp_record_new(int kind, const lp_task *t, double priority, const void *data,
                         size_t len) {
  lp_record *rec = malloc(sizeof *rec + len + 1);
  if (!rec) return NULL;
  atomic_init(&rec->item.next, NULL);
  rec->item.kind = LP_ITEM_RECORD;
  rec->kind = kind;
  rec->task = t ? t->id : 0;
  rec->root = 0;
  if (t && t->eng->up) { /* the engine upstream needs the subtree it belongs to */
    const lp_task *top = t;
    while (top->parent) top = top->parent;
    rec->root = top->id;
  }
  rec->fn = t ? t->fn : -1;
  rec->priority = priority;
  rec->held = 0;
  rec->spilled = 0;
  rec->len = len;
  if (len) memcpy(rec->data, data, len);
  rec->data[len] = '\0';
  return rec;
}

void lp_record_free_list(lp_record *list) {
  for (lp_record *rec = list, *next; rec; rec = next) {
    next = (lp_record *)atomic_load_explicit(&rec->item.next, memory_order_relaxed);
    free(rec);
  }
}

extern const char lp_embedded_report[];
extern const size_t lp_embedded_report_len;

/* The host-only state that runs scripts/report.lua; its table of
 * formatters is kept in the registry. NULL if it cannot be made. */
static lua_State *fmt_state(lp_report *r) {
  if (r->fmt) return r->fmt;
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  luaL_openlibs(L);
  if (luaL_loadbufferx(L, lp_embedded_report, lp_embedded_report_len, "=report.lua", "t") !=
          LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    lua_close(L);
    return NULL;
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "luapool.report");
  r->fmt = L;
  return L;
}

/* Calls report.lua's formatter `fn` on the n values on top of L; leaves
 * one string (or nil) in their place. */
static void format(lua_State *L, const char *fn, int n) {
  lua_getfield(L, LUA_REGISTRYINDEX, "luapool.report");
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_insert(L, -n - 1);
  if (lua_pcall(L, n, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

int lp_record_text(lp_report *r, const char *p, size_t len, lp_buf *out) {
  char scalar[64];
  const char *s;
  size_t slen;
  int n = lp_pack_scalar_text(p, len, scalar, sizeof scalar);
  if (n > 0) return lp_buf_append(out, scalar, (size_t)n);
  if (lp_pack_single_string(p, len, &s, &slen)) return lp_buf_append(out, s, slen);
  lua_State *L = fmt_state(r);
  if (!L) return -1;
  int top = lua_gettop(L), nv = 0, rc = 0;
  char err[256];
  if (lp_unpack_values(L, p, len, NULL, &nv, err, sizeof err) != 0) {
    lua_settop(L, top);
    return -1;
  }
  for (int i = 1; i <= nv && rc == 0; i++) {
    lua_pushvalue(L, top + i);
    format(L, "text", 1);
    s = lua_tolstring(L, -1, &slen);
    if (i > 1) rc = lp_buf_append(out, "\t", 1);
    if (rc == 0 && s) rc = lp_buf_append(out, s, slen);
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return rc;
}

void lp_record_deliver(lp_report *r, lp_record *rec) {
  luapool *eng = r->eng;
  r->delivered++;
  if (!eng->cfg.on_record) return;
  luapool_record out;
  memset(&out, 0, sizeof out);
  out.kind = rec->kind;
  out.task = rec->task;
  out.name = rec->fn >= 0 ? lp_names_get(&eng->names, rec->fn) : "";
  out.priority = rec->priority;
  lua_State *L = NULL;
  int top = 0;
  int json = eng->cfg.json_records;
  if (rec->kind == LUAPOOL_RECORD_PRINT) {
    out.text = rec->data;
    out.text_len = rec->len;
  } else {
    out.value = rec->data;
    out.value_len = rec->len;
  }
  char scalar[64];
  int nscalar = 0;
  if (rec->kind == LUAPOOL_RECORD_EMIT && !json &&
      (nscalar = lp_pack_scalar_text(rec->data, rec->len, scalar, sizeof scalar)) > 0) {
    out.text = scalar; /* numbers, booleans, nil: no Lua state needed */
    out.text_len = (size_t)nscalar;
  } else if (rec->kind == LUAPOOL_RECORD_EMIT &&
             (json || !lp_pack_single_string(rec->data, rec->len, &out.text, &out.text_len))) {
    L = fmt_state(r);
    if (!L) return;
    top = lua_gettop(L);
    int n = 0;
    char err[256];
    if (lp_unpack_values(L, rec->data, rec->len, NULL, &n, err, sizeof err) != 0 || n < 1) {
      lua_settop(L, top);
      lua_pushnil(L);
    } else {
      lua_settop(L, top + 1);
    }
    lua_pushvalue(L, -1);
    format(L, "text", 1); /* stack: value, text */
    out.text = lua_tolstring(L, -1, &out.text_len);
    if (!out.text) out.text = "", out.text_len = 0;
  }
  if (json) {
    if (!L) {
      L = fmt_state(r);
      if (!L) return;
      top = lua_gettop(L);
      lua_pushlstring(L, out.text, out.text_len); /* a print: its text is its value */
      lua_pushvalue(L, -1);
    }
    lua_pushinteger(L, (lua_Integer)out.task);
    lua_pushstring(L, out.name);
    lua_pushnumber(L, out.priority);
    lua_pushvalue(L, top + 1);
    format(L, "record", 4);
    out.json = lua_tolstring(L, -1, &out.json_len);
  }
  eng->cfg.on_record(eng->cfg.ud, &out);
  if (L) lua_settop(L, top);
}

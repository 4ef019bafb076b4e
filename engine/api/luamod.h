/*
 * luamod.h - what the files of the host Lua module share (luamod.c, the
 * pool; luamod_future.c, its futures; luamod_records.c, its records).
 * Internal to luapool.so.
 */
#ifndef LP_LUAMOD_H
#define LP_LUAMOD_H

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "future.h"
#include "pack.h"

#define POOL_MT "luapool.host.pool"
#define FUTURE_MT "luapool.host.future"

/* A record delivered by the engine and not yet read by the iterator. */
typedef struct rec_node {
  struct rec_node *next;
  int kind; /* LUAPOOL_RECORD_* */
  uint64_t task;
  double priority;
  size_t name_len, text_len, value_len;
  char data[]; /* name, text, packed value, one after the other */
} rec_node;

typedef struct pool {
  luapool *lp;           /* NULL once closed */
  rec_node *head, *tail; /* records delivered, not yet read */
  lp_buf failures;       /* reports of unawaited failures, for wait() */
  int lost;              /* records dropped for want of memory */
  size_t qbytes;         /* bytes in the queue */
  size_t hold;           /* the engine's bound: a records loop's queue keeps to it */
  int following;         /* inside records() or wait(0): deliveries pause at the bound */
} pool;

typedef struct hfuture {
  luapool_future *f; /* NULL once collected */
} hfuture;

/* ---- luamod.c: the pool, and misuse errors ----
 *
 * A misuse error names the call as the user wrote it (pool:spawn), the
 * argument counted as written (self not counted), what was expected and
 * what came. */

/* Raises "fname: argument N: expected expected, got TYPE" for index idx. */
int lp_luamod_arg_error(lua_State *L, const char *fname, int idx, const char *expected);
/* The pool at index 1, open or closed; raises if there is none. */
pool *lp_luamod_pool(lua_State *L, const char *fname);
/* Raises for a key of the options table t that is not in known (a
 * NULL-terminated list, which the message gives in order). */
void lp_luamod_check_keys(lua_State *L, int t, const char *fname, const char *const *known);
/* The same, open; raises if it is closed. */
pool *lp_luamod_check_pool(lua_State *L, const char *fname);

/* ---- luamod_future.c ---- */

/* Submits task `name` with the n values at index first as arguments, and
 * pushes its future (which keeps the pool userdata at index 1 alive).
 * fname names the call in errors; argbase is the stack index that error
 * messages count arguments from. */
void lp_luamod_spawn(lua_State *L, pool *p, const char *fname, const char *name, int first, int n,
                     const luapool_task_opts *opts, int argbase);
/* Waits for the future at index idx and pushes its values, or raises its
 * error. Returns the number of values. */
int lp_luamod_get_values(lua_State *L, int idx, double timeout);
/* An optional timeout at index idx: -1 when absent; raises if bad. */
double lp_luamod_timeout(lua_State *L, int idx, const char *fname);
/* The future's methods, metamethods included (its metatable is FUTURE_MT). */
extern const luaL_Reg lp_luamod_future_methods[];
/* lp.as_completed(futures [, timeout]). */
int lp_luamod_as_completed(lua_State *L);

/* ---- luamod_records.c ---- */

/* The engine's callbacks (luapool_config.on_record, on_failure; ud: the
 * pool): they copy, never run Lua. */
void lp_luamod_on_record(void *ud, const luapool_record *rec);
void lp_luamod_on_failure(void *ud, const char *message);
/* pool:records(). */
int lp_luamod_records(lua_State *L);
/* Frees the records not read (the pool is collected). */
void lp_luamod_free_records(pool *p);

#endif

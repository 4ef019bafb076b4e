/*
 * sync_int.h - what sync.c shares with channel.c and sequencer.c: the
 * registry of named objects, the helpers of a wait, and each kind's open
 * and free. Internal: the public interface stays sync.h.
 */
#ifndef LP_SYNC_INT_H
#define LP_SYNC_INT_H

#include <lauxlib.h>
#include <lua.h>

#include "task.h"

typedef struct lp_chan lp_chan; /* channel.c */
typedef struct lp_seq lp_seq;   /* sequencer.c */

/* Which of the registry's tables an object lives in. */
typedef enum lp_sync_kind { LP_SYNC_CHANNEL = 0, LP_SYNC_SEQUENCER } lp_sync_kind;

/* Creates a missing object called `name` (interned: lives as long as the
 * engine) from the constructor's optional argument; NULL if out of memory.
 * Runs under the registry lock, so it only allocates. */
typedef void *(*lp_sync_make_fn)(const char *name, lua_Integer arg, int given);

/* ---- the registry (sync.c) ---- */

/* Pushes this state's userdata for the object named by the string at 1 and
 * returns the object, making it with make() if the engine has none. For a
 * constructor made by lp_sync_add_class. Raises if out of memory. */
void *lp_sync_lookup(lua_State *L, const char *what, lp_sync_kind kind, lp_sync_make_fn make,
                     lua_Integer arg, int given);
/* Sets module[ctor_name] to a constructor for objects with metatable `mt`,
 * whose methods and __tostring get the metatable as upvalue 1 (for
 * lp_sync_check_self); module is an absolute index. */
void lp_sync_add_class(lua_State *L, int module, const char *mt, const luaL_Reg *methods,
                       lua_CFunction tostring, const char *ctor_name, lua_CFunction ctor);

/* ---- helpers of a wait (sync.c) ---- */

/* Raises the error of a cancelled task. Does not return: use it as
 * `return lp_sync_raise_cancelled(L, self);`, like luaL_error. */
int lp_sync_raise_cancelled(lua_State *L, lp_task *self);
/* Hands a task whose arm a waker took back to its owner; NULL: nothing. */
void lp_sync_hand_back(lp_task *t);
/* Registers the timer of a wait that starts now and returns its deadline
 * (< 0: none); *oom (output) is set if that failed. */
double lp_sync_add_timer(lua_State *L, lp_task *self, double deadline, int *oom);
/* Whether the running task could wait here for `deadline` (< 0: none). */
int lp_sync_can_wait(lua_State *L, double deadline);
/* The running task if it can wait here; raises otherwise. */
lp_task *lp_sync_check_can_wait(lua_State *L, const char *what, double deadline);
/* The object behind the userdata at 1, checked against the metatable in
 * the calling method's upvalue 1; raises naming `what` and `kind`. */
void *lp_sync_check_self(lua_State *L, const char *what, const char *kind);
/* The optional integer argument at idx: 1 and *v (output) set if given, 0
 * if nil; raises if it is anything else. */
int lp_sync_opt_int(lua_State *L, int idx, const char *what, const char *param, lua_Integer *v);

/* ---- the two kinds ---- */

/* Add `channel` / `sequencer` to the module table at absolute index module. */
void lp_channel_open(lua_State *L, int module);
void lp_sequencer_open(lua_State *L, int module);
/* Free one object and everything it still owns (engine close); accept NULL. */
void lp_channel_free(lp_chan *ch);
void lp_sequencer_free(lp_seq *s);

#endif

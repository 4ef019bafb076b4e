/*
 * vm.h - one worker's Lua state: allocator, libraries, the script, and the
 * mapping between task function names, ids and values.
 */
#ifndef LP_VM_H
#define LP_VM_H

#include <stddef.h>

#include <lua.h>

#include "pack.h"

struct lp_worker;

/* Creates the state of worker w with a counting allocator, the standard
 * libraries and the task-side `luapool` module preloaded. NULL on failure. */
lua_State *lp_vm_new(struct lp_worker *w);

/* Compiles chunk (text only) and runs its top level with a traceback
 * handler. Returns 0, or -1 with the whole message in *err (malloc'd, the
 * caller frees it; NULL if out of memory). */
int lp_vm_load(lua_State *L, const char *chunk, size_t len, const char *chunkname, char **err);

/* Checks that source is a text chunk that compiles and defines a global
 * function `main` when run; used by `luapool check` and before starting
 * workers. Returns 0, or -1 with a message in *err as lp_vm_load gives it
 * (file:line for syntax errors). */
int lp_vm_check(const char *chunk, size_t len, const char *chunkname, char **err);

/* Pushes the task function with name id `fn`, resolving and caching it on
 * first use. Returns 0, or -1 with nothing pushed if the script has none. */
int lp_vm_push_fn(lua_State *L, int fn);

/* The name id of the task function at idx (a name string or a function
 * value), checking that this state defines it. Returns the id, or -1 with a
 * message in err. */
int lp_vm_fn_id(lua_State *L, int idx, char *err, size_t errlen);

/* The codec context for values sent from or received into this state:
 * function values travel as their global names. */
lp_pack_ctx lp_vm_pack_ctx(lua_State *L, int argbase);

/* The names of every task function the loaded script defines (global
 * functions, and functions in global tables), as a malloc'd array of
 * malloc'd strings. Returns 0 or -1 (out of memory). */
int lp_vm_function_names(lua_State *L, char ***names, int *n);

/* Message handler for lua_pcall: appends a traceback to the message. */
int lp_vm_traceback(lua_State *L);
/* The same, keeping only stack levels 1 .. keep (for a task run inline
 * inside its parent's coroutine, lib/future.c: the levels below are its parent's,
 * which the parent's own traceback shows if it fails too; printed here as
 * well, they appeared twice). */
int lp_vm_traceback_upto(lua_State *L, int keep);

#endif

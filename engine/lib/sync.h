/*
 * sync.h - named channels and ordered sections shared by every task of a run.
 */
#ifndef LP_SYNC_H
#define LP_SYNC_H

#include <lua.h>

struct luapool;

/* Adds `channel` and `sequencer` to the module table at the top of L. */
void lp_sync_register(lua_State *L);
/* Frees every channel, sequencer and counter of the engine (at close). */
void lp_sync_free(struct luapool *eng);

#endif

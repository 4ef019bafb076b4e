/*
 * sync.h - the engine-wide objects found by name and shared by every task
 * of a run: channels, ordered sections (sequencers) and counters' slots.
 */
#ifndef LP_SYNC_H
#define LP_SYNC_H

#include <stdint.h>

#include <lua.h>

struct luapool;

/* Adds `channel` and `sequencer` to the module table at the top of L. */
void lp_sync_register(lua_State *L);
/* The slot of the counter whose name has id name_id (eng->names), made on
 * first use and never moved; NULL when out of memory. Any thread. */
_Atomic int64_t *lp_sync_counter(struct luapool *eng, int name_id);
/* Frees every channel, sequencer and counter of the engine (at close). */
void lp_sync_free(struct luapool *eng);

#endif

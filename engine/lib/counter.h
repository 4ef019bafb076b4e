/*
 * counter.h - the engine's named counters: one atomic slot per name,
 * shared by every task of the run (counter.c).
 */
#ifndef LP_COUNTER_H
#define LP_COUNTER_H

#include <stdint.h>

struct luapool;

/* The slot of the counter whose name has id name_id (eng->names), made on
 * first use; NULL when out of memory. Any thread. */
_Atomic int64_t *lp_counter_slot(struct luapool *eng, int name_id);
/* Frees every counter of the engine (at close, by lp_sync_free). */
void lp_counter_free(struct luapool *eng);

#endif

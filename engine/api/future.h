/*
 * future.h - futures of roots submitted by the host (future.c), shared by
 * the public C API (api.c) and the Lua host module (luamod.c).
 */
#ifndef LP_FUTURE_H
#define LP_FUTURE_H

#include "luapool.h"
#include "pack.h"

/* Submits a root as lp_engine_submit does (args taken on every path) and,
 * with out, makes its future there: 0 or an error with the message set. */
int lp_future_submit(luapool *eng, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     luapool_future **out);

/* Waits until one of the futures fs[0 .. n-1] (of engine eng) is done:
 * 0, LUAPOOL_ETIMEDOUT, LUAPOOL_EDEADLOCK (inline mode: none can finish),
 * LUAPOOL_EINTERRUPTED. Records are delivered meanwhile. */
int lp_future_wait_any(luapool *eng, luapool_future *const *fs, int n, double timeout);

/* The engine closes: every live future keeps a copy of its outcome and lets
 * go of its task (after lp_engine_drain, before lp_engine_stop). */
void lp_future_detach_all(luapool *eng);

#endif

/*
 * bplace.h - what the layers above use of a run through Redis: the place
 * the public layer attaches when luapool_config.broker is set, and the
 * main of `luapool worker --broker`.
 */
#ifndef LP_BPLACE_H
#define LP_BPLACE_H

#include <stddef.h>

struct luapool;

/* Attaches the broker's place to the main pool when the engine's config
 * names a broker: its roots then run wherever the run's workers are. 0, or
 * LUAPOOL_ENOMEM with the message set. */
int lp_broker_attach(struct luapool *eng);

/* `luapool worker --broker url`: serves every run on the broker (or run
 * `only`, leaving when it is over) with `processes` worker processes of
 * `threads` threads per run, until SIGINT or SIGTERM. Returns the exit
 * status: 0, 1 (the broker cannot be had) or 2 (a bad URL), with the
 * message in err. */
int lp_broker_worker(const char *url, int processes, int threads, const char *only, char *err,
                     size_t errlen);

#endif

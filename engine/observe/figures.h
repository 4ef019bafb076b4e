/*
 * figures.h - a run's figures as the host reads them (figures.c); the
 * public face is luapool_get_stats and luapool_get_worker_stats.
 */
#ifndef LP_FIGURES_H
#define LP_FIGURES_H

struct luapool;

/* Host thread, while it waits (about every millisecond, or after every
 * task in inline mode): samples the peaks, the trace's queue counters and
 * calls the progress callback when it is due. */
void lp_figures_tick(struct luapool *eng);

#endif

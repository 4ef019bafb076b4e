/*
 * progress.h - the luapool command's displays on stderr (progress.c): the
 * live progress bar and the --stats summary.
 */
#ifndef LP_PROGRESS_H
#define LP_PROGRESS_H

#include <stdio.h>

#include "luapool.h"

typedef struct lp_progress {
  int shown;    /* the bar is on the screen now */
  int width[6]; /* the widest each field has been: fields only grow */
} lp_progress;

/* Whether to draw a bar: asked for and stderr is a terminal. */
int lp_progress_wanted(int requested);
void lp_progress_draw(lp_progress *p, const luapool_stats *st);
/* Erases the bar, if it is shown (before other output reaches the terminal). */
void lp_progress_clear(lp_progress *p);
/* The --stats summary. */
void lp_progress_summary(luapool *lp, FILE *out);

#endif

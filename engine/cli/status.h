/*
 * status.h - `luapool status --broker URL` (status.c): the runs and the
 * workers a broker holds.
 */
#ifndef LP_STATUS_H
#define LP_STATUS_H

#include <stdio.h>

/* Prints the broker's runs and workers to out; messages to stderr. Returns
 * the command's exit status: 0, 1 (the broker cannot be reached, refused
 * us, or answered with an error), 2 (a bad URL). */
int lp_status_main(const char *url, FILE *out);

#endif

/*
 * value.h - the C side of the value codec (value.c): luapool_values, built
 * from C, become a message; luapool_cursor reads one back.
 */
#ifndef LP_VALUE_H
#define LP_VALUE_H

#include "luapool.h"
#include "pack.h"

/* Appends to out the message of the values v (NULL: none): 0,
 * LUAPOOL_EINVAL (a table is not full) or LUAPOOL_ENOMEM. */
int lp_value_message(const luapool_values *v, lp_buf *out);

/* The one-line summary of packed values for the report of a failure
 * nobody awaited: (1, 2.0, "text", table, nil); strings over 60 bytes are
 * "...". malloc'd; NULL when out of memory. */
char *lp_value_summary(const char *packed, size_t len);

#endif

/*
 * fail.h - finishing a task that did not return (fail.c): the text of its
 * failure or cancellation, made on its worker.
 */
#ifndef LP_FAIL_H
#define LP_FAIL_H

#include <stddef.h>

#include <lua.h>

struct lp_worker;
struct lp_task;

/* Finishes t as failed (or cancelled, if it was) with the message text. */
void lp_fail_text(struct lp_worker *w, struct lp_task *t, const char *text, size_t len);
/* t's body raised in coroutine co (the error object on its top): finishes
 * t as failed with the message and co's traceback. co NULL: t's coroutine
 * could not be made ("could not start"). */
void lp_fail_task(struct lp_worker *w, struct lp_task *t, lua_State *co);
/* Finishes t as cancelled before its body began. */
void lp_fail_cancel(struct lp_worker *w, struct lp_task *t);

#endif

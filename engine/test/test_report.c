/*
 * test_report.c - completion order inside a worker process: the link may
 * tell the engine that a subtree is over (DONE) only once it has sent every
 * record made before. A producer stalled between taking its place in the
 * queue and linking it hides the records made after it; the walk must say
 * so, or the DONE goes out first and the engine drops those records.
 */
#include <stdatomic.h>

#include "check.h"
#include "engine.h"
#include "report.h"

static char got[8];
static int ngot;

static void sink(void *ud, const lp_record *rec) {
  (void)ud;
  if (ngot < (int)sizeof got) got[ngot++] = rec->data[0];
}

static lp_record *rec(const char *text) {
  return lp_record_new(LUAPOOL_RECORD_PRINT, NULL, 0, text, strlen(text));
}

int main(void) {
  static luapool eng; /* the report only needs it at close, zeroed */
  lp_report r;
  CHECK_EQ(lp_report_init(&r, &eng, LUAPOOL_ORDER_COMPLETION, 1), 0);
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 1); /* nothing made: nothing missing */

  lp_report_add(&r, NULL, rec("a"));
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 1);
  CHECK_EQ(ngot, 1);

  /* b's producer takes its place, then stalls before linking it... */
  lp_record *b = rec("b");
  atomic_store(&b->item.next, NULL);
  lp_item *before_b = atomic_exchange(&r.ctail, &b->item);
  /* ...while another producer adds c behind it. */
  lp_report_add(&r, NULL, rec("c"));
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 0);
  CHECK_EQ(ngot, 1); /* c cannot be reached yet */
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 0);

  /* b is linked: the next walk has everything, in the order made. */
  atomic_store(&before_b->next, &b->item);
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 1);
  CHECK_EQ(ngot, 3);
  CHECK(memcmp(got, "abc", 3) == 0);

  lp_report_add(&r, NULL, rec("d"));
  CHECK_EQ(lp_report_walk_made(&r, sink, NULL), 1);
  CHECK_EQ(ngot, 4);

  lp_report_free(&r);
  return check_report("test_report");
}

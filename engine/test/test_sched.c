/*
 * test_sched.c - the scheduler's queues: order, priorities, stealing,
 * hand-backs, and exactly-once delivery under concurrent producers and
 * thieves.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "check.h"
#include "sched.h"
#include "task.h"

static lp_task *mk(double prio) {
  lp_task *t = calloc(1, sizeof *t);
  t->priority = prio;
  return t;
}

static void test_lifo_and_priority(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 1), 0);
  lp_task *a = mk(0), *b = mk(0), *c = mk(-1), *d = mk(5);
  lp_sched_push(&s, 0, a);
  lp_sched_push(&s, 0, d);
  lp_sched_push(&s, 0, b);
  lp_sched_push(&s, 0, c);
  /* lowest priority value first; newest first within a priority */
  CHECK(lp_sched_next(&s, 0) == c);
  CHECK(lp_sched_next(&s, 0) == b);
  CHECK(lp_sched_next(&s, 0) == a);
  CHECK(lp_sched_next(&s, 0) == d);
  CHECK(lp_sched_next(&s, 0) == NULL);
  CHECK_EQ(lp_sched_queued(&s), 0);
  lp_sched_free(&s);
  free(a), free(b), free(c), free(d);
}

static void test_inbox_first_and_take(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 2), 0);
  lp_task *a = mk(0), *b = mk(0), *r = mk(9);
  lp_sched_push(&s, 0, a);
  lp_sched_push(&s, 0, b);
  lp_sched_resume(&s, 0, r);
  CHECK(lp_sched_next(&s, 0) == r); /* resumed tasks go first */
  lp_task parent, other;
  a->parent = b->parent = &parent;
  CHECK(lp_sched_take_child(&s, 0, &other, NULL) == NULL); /* not a child of `other` */
  CHECK(lp_sched_take_child(&s, 0, &parent, a) == NULL);   /* a is not the newest */
  CHECK(lp_sched_take_child(&s, 0, &parent, b) == b);      /* the newest child */
  b->timeout = 1;
  lp_sched_push(&s, 0, b);
  CHECK(lp_sched_take_child(&s, 0, &parent, NULL) == NULL); /* a time limit: never inline */
  CHECK(lp_sched_next(&s, 0) == b);
  CHECK(lp_sched_next(&s, 1) == a); /* worker 1 steals it */
  CHECK(lp_sched_next(&s, 0) == NULL);
  lp_sched_free(&s);
  free(a), free(b), free(r);
}

static void test_steal_oldest_half(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 2), 0);
  lp_task *t[10];
  for (int i = 0; i < 10; i++) lp_sched_push(&s, 0, t[i] = mk(0));
  /* the thief takes the oldest half and runs the oldest first */
  CHECK(lp_sched_next(&s, 1) == t[0]);
  CHECK_EQ(lp_sched_queued(&s), 9);
  CHECK(lp_sched_next(&s, 0) == t[9]);
  int n = 0;
  while (lp_sched_next(&s, 1)) n++;
  while (lp_sched_next(&s, 0)) n++;
  CHECK_EQ(n, 8);
  lp_sched_free(&s);
  for (int i = 0; i < 10; i++) free(t[i]);
}

static void test_yielded_and_injected(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 1), 0);
  lp_task *y = mk(0), *j = mk(0), *q = mk(0);
  lp_sched_yielded(&s, 0, y);
  lp_sched_inject(&s, j);
  lp_sched_push(&s, 0, q);
  CHECK(lp_sched_next(&s, 0) == q); /* own queue before outside and yielded */
  CHECK(lp_sched_next(&s, 0) == j);
  CHECK(lp_sched_next(&s, 0) == y);
  CHECK(lp_sched_next(&s, 0) == NULL);
  lp_sched_free(&s);
  free(y), free(j), free(q);
}

/* A push and an inject say how many tasks their queue holds now: what
 * spawn bounds (lib/spawn.c). A push counts every level of the worker's
 * queue; the count falls as tasks are taken. */
static void test_lengths(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 2), 0);
  lp_task *t[4] = {mk(0), mk(3), mk(0), mk(0)};
  CHECK_EQ(lp_sched_push(&s, 0, t[0]), 1);
  CHECK_EQ(lp_sched_push(&s, 0, t[1]), 2);
  CHECK(lp_sched_next(&s, 0) == t[0]);
  CHECK_EQ(lp_sched_push(&s, 0, t[0]), 2);
  CHECK_EQ(lp_sched_push(&s, 1, t[2]), 1); /* each worker its own */
  CHECK_EQ(lp_sched_inject(&s, t[3]), 1);
  CHECK(lp_sched_next(&s, 1) == t[2]);
  CHECK_EQ(lp_sched_queued(&s), 3);
  int n = 0;
  while (lp_sched_next(&s, 0)) n++;
  CHECK_EQ(n, 3);
  lp_sched_free(&s);
  for (int i = 0; i < 4; i++) free(t[i]);
}

static void test_many_levels(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 1), 0);
  enum { N = 1000 };
  lp_task *t[N];
  for (int i = 0; i < N; i++) lp_sched_push(&s, 0, t[i] = mk((double)((i * 7919) % N)));
  int n = 0;
  while (lp_sched_next(&s, 0)) n++;
  CHECK_EQ(n, N); /* more priorities than levels: none is lost */
  lp_sched_free(&s);
  for (int i = 0; i < N; i++) free(t[i]);
}

/* Concurrency: every worker pushes its share of tasks and pops/steals until
 * all are seen; each task must be taken exactly once. */
enum { NW = 4, PER = 50000 };
static lp_sched g_s;
static _Atomic int g_taken[NW * PER];
static _Atomic long g_total;
static lp_task *g_tasks[NW * PER];

static void *worker(void *arg) {
  int w = (int)(long)arg;
  for (int i = 0; i < PER; i++) {
    lp_sched_push(&g_s, w, g_tasks[w * PER + i]);
    if (i % 3 == 0) {
      lp_task *t = lp_sched_next(&g_s, w);
      if (t) {
        atomic_fetch_add(&g_taken[t->id], 1);
        atomic_fetch_add(&g_total, 1);
      }
    }
  }
  while (atomic_load(&g_total) < NW * PER) {
    lp_task *t = lp_sched_next(&g_s, w);
    if (t) {
      atomic_fetch_add(&g_taken[t->id], 1);
      atomic_fetch_add(&g_total, 1);
    }
  }
  return NULL;
}

static void test_concurrent_exactly_once(void) {
  CHECK_EQ(lp_sched_init(&g_s, NW), 0);
  for (int i = 0; i < NW * PER; i++) {
    g_tasks[i] = mk((double)(i % 3));
    g_tasks[i]->id = (uint64_t)i;
  }
  pthread_t th[NW];
  for (long w = 0; w < NW; w++) pthread_create(&th[w], NULL, worker, (void *)w);
  for (int w = 0; w < NW; w++) pthread_join(th[w], NULL);
  int bad = 0;
  for (int i = 0; i < NW * PER; i++) bad += atomic_load(&g_taken[i]) != 1;
  CHECK_EQ(bad, 0);
  CHECK_EQ(atomic_load(&g_total), NW * PER);
  lp_sched_free(&g_s);
  for (int i = 0; i < NW * PER; i++) free(g_tasks[i]);
}

/* A wake_all (a cancel) that comes after a worker's last look at its
 * timers but before it parks is not lost: the park returns at once instead
 * of sleeping until the worker's next timer. */
static void test_wake_all_before_park(void) {
  lp_sched s;
  CHECK_EQ(lp_sched_init(&s, 1), 0);
  lp_sched_wake_all(&s); /* the worker is not parked yet */
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  lp_sched_park(&s, 0, 5.0);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double took = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  CHECK(took < 2.5);
  /* The alarm is spent: the next park sleeps for its timeout. */
  clock_gettime(CLOCK_MONOTONIC, &a);
  lp_sched_park(&s, 0, 0.05);
  clock_gettime(CLOCK_MONOTONIC, &b);
  took = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  CHECK(took >= 0.04);
  lp_sched_free(&s);
}

int main(void) {
  test_lifo_and_priority();
  test_inbox_first_and_take();
  test_steal_oldest_half();
  test_yielded_and_injected();
  test_lengths();
  test_many_levels();
  test_concurrent_exactly_once();
  test_wake_all_before_park();
  return check_report("test_sched");
}

/*
 * procworker.c - a worker process: runs the tasks the engine sends it.
 *
 * DESIGN. The process is a luapool engine of its own (T worker threads,
 * each with its Lua state and the script) whose roots are the tasks the
 * engine sends. Their subtasks run here, with the same scheduler, waits
 * and completion counting as in thread mode. The main thread is the link:
 * it reads EXEC frames into new roots and sends back, batched into one
 * write, what the engine must know of each root: STARTED when its body
 * begins (a crash before that loses nothing, the engine sends it again),
 * its RECORDs in the order the engine's report needs (tree order of the
 * subtree, or the order they were made), RESULT when its body ends, DONE
 * when its whole subtree has. It asks for more work with WANT, keeping a
 * window of runnable tasks (queued or running: a task that waits leaves
 * it, as it leaves its thread) that grows while its workers run dry, so
 * small tasks travel in large batches and long ones are not hoarded.
 *
 * This file is the process's start-up and the link's loop (read, hand
 * over, forward, want, write); the link's state and who owns it are in
 * link.h, the frames in link_in.c and link_up.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "link.h"
#include "pool.h"
#include "timer.h"
#include "proc.h"

/* Asks for more work when the window has room for a good batch. The
 * window counts runnable work only: tasks queued here (the roots not yet
 * begun and what they spawned) and tasks running on a thread. A task that
 * waits (a sleep, a get, a channel) leaves the window, as it leaves its
 * worker thread, so the process takes more work meanwhile; what it holds
 * in all, waiting tasks included, stays under HELD_MAX. The window holds
 * about WINDOW seconds of work at the rate bodies begin here, never less
 * than one task per thread: short tasks come in large batches, long ones
 * are not hoarded while another process could run them. */
#define WINDOW 0.002
#define HELD_MAX 65536 /* roots whose subtrees have not ended, per process */
static void want(lp_link *k) {
  luapool *eng = k->eng;
  double now = lp_now();
  uint64_t begun = atomic_load_explicit(&k->begun, memory_order_relaxed);
  if (now - k->win_start >= 0.02) {
    double rate = (double)(begun - k->win_begun) / (now - k->win_start);
    k->rate = k->rate > 0 ? 0.5 * k->rate + 0.5 * rate : rate;
    k->win_start = now;
    k->win_begun = begun;
    long t = (long)(k->rate * WINDOW);
    k->target = t < k->threads ? k->threads : t > 1024 ? 1024 : t;
  }
  if (k->stopping) return;
  long credit = (long)(k->asked - k->received);
  /* Roots not begun count from their arrival: a root a thread has taken
   * from its queue but not yet begun is neither queued nor running. */
  long queued = lp_sched_queued(&eng->sched),
       unbegun = (long)(k->received - begun - k->never_begun);
  long runnable = queued > unbegun ? queued : unbegun;
  for (int i = 0; i < eng->nworkers; i++)
    runnable += atomic_load_explicit(&eng->workers[i].stats.executing, memory_order_relaxed);
  long held = (long)(k->received - k->subtrees);
  long n = k->target - runnable - credit;
  if (n > HELD_MAX - held - credit) n = HELD_MAX - held - credit;
  long batch = k->target / 4 > 0 ? k->target / 4 : 1;
  if (n < batch) return;
  lp_link_put_id(k, LP_MSG_WANT, (uint64_t)n);
  k->asked += (uint64_t)n;
}

/* Writes what it can without blocking. -1: the engine is gone. */
static int flush_some(lp_link *k) {
  while (k->wpos < k->wbuf.len) {
    ssize_t n = write(k->out_fd, k->wbuf.data + k->wpos, k->wbuf.len - k->wpos);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      return -1;
    }
    k->wpos += (size_t)n;
  }
  lp_buf_reset(&k->wbuf);
  k->wpos = 0;
  return 0;
}

/* Reads what is there. 1: data, 0: nothing, -1: end of input or error. */
static int read_some(lp_link *k) {
  int got = 0;
  for (;;) {
    if (lp_buf_reserve(&k->rbuf, 65536) != 0) return -1;
    ssize_t n = read(k->in_fd, k->rbuf.data + k->rbuf.len, 65536);
    if (n > 0) {
      k->rbuf.len += (size_t)n;
      got = 1;
      if (n < 65536) return got;
      continue;
    }
    if (n == 0) return -1;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return got;
    return -1;
  }
}

static int loop(lp_link *k) {
  for (;;) {
    int r = read_some(k);
    if (r < 0) return 0; /* the engine closed the pipe: the run is over */
    if (r > 0 && lp_link_read_frames(k) != 0) {
      fprintf(stderr, "luapool worker %d: malformed message from the engine\n", (int)getpid());
      return 3;
    }
    lp_link_forward(k);
    want(k);
    if (flush_some(k) != 0) return 0;
    struct pollfd p[3] = {{k->in_fd, POLLIN, 0}, {k->kick_fd, POLLIN, 0}, {k->out_fd, 0, 0}};
    if (k->wpos < k->wbuf.len) p[2].events = POLLOUT;
    atomic_store(&k->sleeping, 1);
    /* Frames the workers queued before we said we sleep would wait for
     * the timeout: look once more. */
    pthread_mutex_lock(&k->lock);
    int pending = atomic_load(&k->finished) || atomic_load(&k->done) || k->out.len;
    pthread_mutex_unlock(&k->lock);
    if (!pending) poll(p, p[2].events ? 3 : 2, k->active ? 1 : 100);
    atomic_store(&k->sleeping, 0);
    if (p[1].revents & POLLIN) {
      uint64_t v;
      ssize_t rc = read(k->kick_fd, &v, sizeof v);
      (void)rc;
    }
  }
}

/* ---- start-up ---- */

static int read_frame_blocking(int fd, lp_buf *b, lp_wire_msg *m) {
  for (;;) {
    long n = lp_wire_frame(b->data, b->len, m);
    if (n > 0) return 0;
    if (n < 0) return -1;
    if (lp_buf_reserve(b, 65536) != 0) return -1;
    ssize_t r = read(fd, b->data + b->len, 65536);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return -1;
    }
    b->len += (size_t)r;
  }
}

static void send_now(int fd, int type, const char *text) {
  lp_buf b;
  lp_buf_init(&b);
  size_t mark;
  if (lp_wire_begin(&b, type, &mark) == 0 &&
      (!text || lp_wire_bytes(&b, text, strlen(text)) == 0)) {
    lp_wire_end(&b, mark);
    lp_wire_write_all(fd, b.data, b.len);
  }
  lp_buf_free(&b);
}

static void on_failure(void *ud, const char *text) {
  lp_link *k = ud;
  size_t mark;
  pthread_mutex_lock(&k->lock);
  if (lp_wire_begin(&k->out, LP_MSG_FAILURE, &mark) == 0 &&
      lp_wire_bytes(&k->out, text, strlen(text)) == 0)
    lp_wire_end(&k->out, mark);
  pthread_mutex_unlock(&k->lock);
}

/* The way out before the loop runs: everything freed, for leak checkers. */
static int leave(lp_link *k, luapool *eng, int code) {
  if (eng) luapool_close(eng);
  lp_buf_free(&k->out);
  lp_buf_free(&k->wbuf);
  lp_buf_free(&k->rbuf);
  free(k->ws);
  free(k->exported.slot);
  lp_task_cache_self = NULL;
  lp_task_cache_drain(&k->cache);
  pthread_mutex_destroy(&k->lock);
  return code;
}

int lp_procworker_main(int in_fd, int out_fd) {
  /* No worker outlives the engine, even one killed without a word. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Programs a task starts (os.execute, io.popen) must not hold the socket:
   * the engine would not see this process's end while they live. */
  fcntl(in_fd, F_SETFD, FD_CLOEXEC);
  if (out_fd != in_fd) fcntl(out_fd, F_SETFD, FD_CLOEXEC);
  if (getppid() == 1) return 1;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* the engine decides what an interrupt means */
  lp_link k;
  memset(&k, 0, sizeof k);
  k.in_fd = in_fd;
  k.out_fd = out_fd;
  pthread_mutex_init(&k.lock, NULL);
  lp_buf_init(&k.out);
  lp_buf_init(&k.wbuf);
  lp_buf_init(&k.rbuf);
  lp_task_cache_init(&k.cache);
  lp_wire_msg m;
  lp_wire_init in;
  if (read_frame_blocking(in_fd, &k.rbuf, &m) != 0 || lp_wire_get_init(&m, &in) != 0 ||
      in.threads < 1 || in.threads > 4096 || in.retries > 1000000) {
    fprintf(stderr, "luapool worker: no valid start message on its pipe\n");
    return leave(&k, NULL, 2);
  }
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = (int)in.threads;
  cfg.order = in.order == LUAPOOL_ORDER_COMPLETION ? LUAPOOL_ORDER_COMPLETION : LUAPOOL_ORDER_TREE;
  cfg.memory_limit = (size_t)in.memory_limit;
  cfg.task_timeout = in.task_timeout;
  cfg.retries = (int)in.retries; /* for the subtasks made here: the engine retries its own */
  cfg.on_failure = on_failure;
  cfg.ud = &k;
  /* No file here: at close the events go to the engine (its uplink's trace). */
  if (in.trace) cfg.trace_path = "(the engine's)";
  luapool *eng;
  if (luapool_open(&cfg, &eng) != 0) return leave(&k, NULL, 2);
  k.eng = eng;
  k.up.ops = &lp_link_ops;
  k.up.where = "a worker process";
  k.up.keeps_exit = 1; /* os.exit ends this process, which the engine replaces */
  eng->up = &k.up;
  char *pname = strndup(in.pool, in.pool_len); /* self().pool, and the pool its spawns go to */
  if (!pname) return leave(&k, eng, 2);
  free(eng->pools[0].name);
  eng->pools[0].name = pname;
  atomic_store(&eng->next_id, in.id_base);
  k.threads = (int)in.threads;
  k.ws = calloc(in.threads, sizeof *k.ws);
  if (!k.ws) return leave(&k, eng, 2);
  lp_task_cache_self = &k.cache;
  k.target = (long)in.threads;
  /* Specs widen the window between the link's takes of its stacks. */
  const char *pause = getenv("LUAPOOL_TEST_LINK_PAUSE");
  k.test_pause = pause ? strtol(pause, NULL, 10) : 0;
  k.win_start = lp_now();
  char *chunkname = strndup(in.chunkname, in.chunkname_len);
  int rc =
      chunkname ? luapool_load_string(eng, in.script, in.script_len, chunkname) : LUAPOOL_ENOMEM;
  free(chunkname);
  if (rc != 0) {
    send_now(out_fd, LP_MSG_LOADERR, luapool_errmsg(eng));
    return leave(&k, eng, 2);
  }
  /* The rest of the first read may hold frames already. */
  size_t first = (size_t)(m.end - (const unsigned char *)k.rbuf.data);
  memmove(k.rbuf.data, k.rbuf.data + first, k.rbuf.len - first);
  k.rbuf.len -= first;
  k.kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (k.kick_fd < 0) return leave(&k, eng, 2);
  fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
  fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) | O_NONBLOCK);
  /* READY carries the first request for work: every process is asking
   * from the moment the engine hears it exists. */
  lp_link_put_id(&k, LP_MSG_READY, (uint64_t)k.target);
  k.asked = (uint64_t)k.target;
  if (lp_link_read_frames(&k) != 0) _exit(3);
  rc = loop(&k);
  if (rc == 0 && !k.active) {
    /* The run is over. Closing the engine collects the futures the worker
     * states still hold: a failure nobody awaited is known only then (as
     * at luapool_close in thread mode), and the engine still listens. The
     * trace's events go too. */
    fcntl(out_fd, F_SETFL, fcntl(out_fd, F_GETFL) & ~O_NONBLOCK);
    /* The process is about to exit: freeing the states' memory need not
     * hand it back to the system page by page (an madvise per free). */
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
    luapool_close(eng);
    pthread_mutex_lock(&k.lock);
    lp_buf_append(&k.wbuf, k.out.data, k.out.len);
    pthread_mutex_unlock(&k.lock);
    lp_wire_write_all(out_fd, k.wbuf.data + k.wpos, k.wbuf.len - k.wpos);
  }
  /* Otherwise the engine is gone or the run was stopped: leave without
   * waiting for tasks that nobody will hear from. */
  _exit(rc);
}

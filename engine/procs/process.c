/*
 * process.c - a worker process's start (the INIT frame, the spawn) and its
 * end (what becomes of the tasks it had).
 *
 * Processes are started by executing the luapool binary in its worker
 * role, not by fork: the engine is multithreaded by then, and a child of a
 * multithreaded fork may only call async-signal-safe functions until it
 * execs. Exec gives every worker, the first ones and the replacements
 * alike, a clean state that loads the script from its source.
 *
 * A process that dies (a signal, an exit, a malformed frame) is replaced.
 * Of the tasks it had, those whose body had not begun go back on the queue
 * as they were; the others fail with what happened, or run again while
 * they have retries. Records of a task that may still be retried are kept
 * until its outcome is known, and a failed attempt's are dropped once its
 * subtree is over (report.c, as for threads), so each is reported once.
 *
 * The thread that starts the place starts the first processes; a
 * connection's reader sees its process end and replaces it, under c->wlock
 * so that no feeder writes meanwhile.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "procs.h"
#include "value.h"

extern char **environ;

#define EARLY_DEATHS 3 /* deaths before READY in a row that give a slot up */

/* ---- starting a process ---- */

static int put_init(lp_procs *ps, lp_conn *c, lp_buf *b) {
  luapool *eng = ps->eng;
  lp_pooldef *d = &eng->pools[ps->pool];
  lp_wire_init f = {
      .slot = (uint64_t)c->slot,
      .threads = (uint64_t)(d->threads > 0 ? d->threads : 1),
      .order = (uint64_t)eng->cfg.order,
      .memory_limit = eng->cfg.memory_limit,
      .id_base = ++eng->proc_gens << 32,
      .task_timeout = eng->cfg.task_timeout,
      .chunkname = eng->chunkname,
      .chunkname_len = strlen(eng->chunkname),
      .script = eng->script,
      .script_len = eng->script_len,
      .pool = d->name,
      .pool_len = strlen(d->name),
      .trace = eng->cfg.trace_path != NULL,
      .retries = (uint64_t)eng->cfg.retries,
  };
  return lp_wire_put_init(b, &f);
}

int lp_process_start(const char *exe, const lp_buf *init, pid_t *pid, int *fd) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
  char *argv[] = {"luapool", "__worker", NULL};
  int rc = posix_spawn(pid, exe, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    return -1;
  }
  if (lp_wire_write_all(sv[0], init->data, init->len) != 0) {
    /* It will find its pipe closed and leave. */
    close(sv[0]);
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    return -1;
  }
  *fd = sv[0];
  return 0;
}

/* Under wlock and lock: a new process for c. 0 or -1. */
int lp_process_spawn(lp_procs *ps, lp_conn *c) {
  lp_buf init;
  lp_buf_init(&init);
  pid_t pid;
  int fd;
  int rc = put_init(ps, c, &init) != 0 || lp_process_start(ps->exe, &init, &pid, &fd) != 0;
  lp_buf_free(&init);
  if (rc) return -1;
  c->pid = pid;
  c->fd = fd;
  c->gen++;
  c->ready = 0;
  c->credits = 0;
  lp_buf_reset(&c->out);
  return 0;
}

/* ---- a process ends ---- */

/* Under the pool's lock: the process of c is gone, its counts join those
 * of the processes before it. Subtasks it had not finished are dropped. */
static void fold_stats(lp_procs *ps, lp_conn *c) {
  lp_rstats *b = &c->before, *r = &c->now;
  b->made += r->fin;
  b->fin += r->fin;
  b->run += r->run;
  b->failed += r->failed;
  b->retried += r->retried;
  b->cpu += r->cpu;
  if (r->depth > b->depth) b->depth = r->depth;
  for (int i = 0; i < ps->threads; i++) {
    b->threads[i].run += r->threads[i].run;
    b->threads[i].busy += r->threads[i].busy;
  }
  lp_tstat *keep = r->threads;
  memset(r, 0, sizeof *r);
  memset(keep, 0, sizeof *keep * (size_t)ps->threads);
  r->threads = keep;
}

static const char *signame(int sig) {
  switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGQUIT: return "SIGQUIT";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGXCPU: return "SIGXCPU";
    default: return "a signal";
  }
}

static void describe(pid_t pid, int status, const char *why, char *out, size_t n) {
  if (why)
    snprintf(out, n, "worker process %d %s", (int)pid, why);
  else if (WIFSIGNALED(status))
    snprintf(out, n, "worker process %d was killed by signal %d (%s)", (int)pid, WTERMSIG(status),
             signame(WTERMSIG(status)));
  else if (WIFEXITED(status))
    snprintf(out, n, "worker process %d exited with status %d", (int)pid, WEXITSTATUS(status));
  else
    snprintf(out, n, "worker process %d ended", (int)pid);
}

/* Fails or sends again every task the dead process had, then replaces it
 * (unless the engine is closing). */
void lp_process_died(lp_conn *c, const char *why) {
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  pthread_mutex_lock(&c->wlock);
  pthread_mutex_lock(&c->mlock);
  lp_idmap had = c->tasks;
  memset(&c->tasks, 0, sizeof c->tasks);
  pthread_mutex_unlock(&c->mlock);
  pthread_mutex_lock(&ps->lock);
  fold_stats(ps, c);
  pid_t pid = c->pid;
  int fd = c->fd;
  c->fd = -1;
  int was_ready = c->ready;
  c->ready = 0;
  c->credits = 0;
  lp_buf_reset(&c->out);
  int closing = ps->closing;
  pthread_mutex_unlock(&ps->lock);
  if (why && pid > 0) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  close(fd);
  char what[256];
  describe(pid, status, why, what, sizeof what);
  /* A process that died before it was ready is replaced a few times in a
   * row: a kill from outside can land while it loads. More often than that,
   * or after it said why it could not load, the next one would die the
   * same way (a broken script or worker program, no memory). */
  int replaced = 0;
  if (!closing) {
    pthread_mutex_lock(&ps->lock);
    c->early = was_ready ? 0 : c->early + 1;
    int again = was_ready || (!c->loaderr && why == NULL && c->early < EARLY_DEATHS);
    replaced = again && lp_process_spawn(ps, c) == 0;
    if (!replaced) {
      c->gone = 1;
      if (!c->loaderr) {
        char text[320];
        snprintf(text, sizeof text, "%s before it was ready", what);
        c->loaderr = strdup(text);
      }
      pthread_cond_broadcast(&ps->ready_cond);
    }
    pthread_mutex_unlock(&ps->lock);
  }
  pthread_mutex_unlock(&c->wlock);
  for (size_t i = 0; i < had.cap; i++) {
    lp_task *t = had.slot[i];
    if (!t) continue;
    /* Never began: nothing was lost, it goes again, once. A process dies
     * before its STARTED frames go out too: the second time, a task that
     * kills its process at once is taken as having begun. */
    if (!t->at_started && !lp_task_finished(t) && !t->at_resent++) {
      atomic_store(&t->state, LP_TASK_QUEUED);
      lp_task_away_done(t, 1);
      pthread_mutex_lock(&ps->lock);
      int own = replaced && !ps->stopping && !lp_task_cancelled(t);
      if (own) {
        t->qnext = c->resend;
        c->resend = t;
        c->nresend++;
        poke(c);
      }
      pthread_mutex_unlock(&ps->lock);
      if (!own) lp_procs_push(eng, t, 1);
      lp_task_unref(t);
      continue;
    }
    if (!lp_task_finished(t) && !t->retry_pending) {
      if (!closing && lp_task_retry(t)) {
        /* it runs again once its subtree is over */
      } else {
        if (!t->failnote) t->failnote = lp_value_summary(t->args.data, t->args.len);
        char text[512];
        if (t->at_overtime)
          snprintf(text, sizeof text, "task '%s' (id %llu) failed: timed out after %g s (%s)",
                   lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, t->timeout, what);
        else
          snprintf(text, sizeof text, "task '%s' (id %llu) failed: %s while running it",
                   lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, what);
        if (!lp_task_cancelled(t)) atomic_fetch_add(&ps->failed, 1);
        lp_relay_finish_with(t, lp_task_cancelled(t) ? LP_TASK_CANCELLED : LP_TASK_FAILED, text);
      }
    }
    lp_reader_subtree_over(ps, t);
  }
  free(had.slot);
  if (!replaced) { /* the slot is given up: what it was to run goes to the others */
    pthread_mutex_lock(&ps->lock);
    lp_task *list = c->resend;
    c->resend = NULL;
    c->nresend = 0;
    pthread_mutex_unlock(&ps->lock);
    for (lp_task *t = list, *next; t; t = next) {
      next = t->qnext;
      lp_procs_push(eng, t, 1);
    }
  }
  if (!replaced && !closing) {
    /* No process here any more: if none is left anywhere, nothing queued
     * can ever run. */
    pthread_mutex_lock(&ps->lock);
    int alive = 0;
    for (int i = 0; i < ps->n; i++) alive += !ps->conns[i].gone;
    pthread_mutex_unlock(&ps->lock);
    if (!alive) {
      pthread_mutex_lock(&ps->lock);
      snprintf(ps->lost, sizeof ps->lost, "no worker process is left in pool '%s' (the last: %s)",
               eng->pools[ps->pool].name, c->loaderr ? c->loaderr : what);
      pthread_mutex_unlock(&ps->lock);
      lp_procs_cancel_pool(eng, ps);
    }
  }
}

/*
 * api.c - the public C API of luapool.h: each luapool_* function checks its
 * handle and arguments, then calls the engine object (core/engine.c); the
 * values it packs are built by core/value.c and its futures are future.c's.
 *
 * Every entry point but luapool_interrupt checks its handle against the
 * list of open engines (lp_engine_is_open), so a handle used after
 * luapool_close is refused rather than dereferenced. Callbacks run on the
 * host's thread, inside luapool_wait and luapool_future_wait.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bplace.h"
#include "engine.h"
#include "figures.h"
#include "future.h"
#include "lib.h"
#include "proc.h"
#include "sync.h"
#include "trace.h"
#include "value.h"

const char *luapool_strerror(int err) {
  switch (err) {
    case 0: return "success";
#define LP_ERRNO_CASE(name, value, text) \
  case LUAPOOL_E##name: return text;
      LUAPOOL_ERRNO_MAP(LP_ERRNO_CASE)
#undef LP_ERRNO_CASE
    default: return "unknown error";
  }
}

void luapool_config_init(luapool_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n > 0 ? (int)n : 1;
  cfg->order = LUAPOOL_ORDER_TREE;
}

const char *luapool_errmsg(luapool *lp) {
  if (!lp) return "no engine";
  if (!lp_engine_is_open(lp)) return "not an open luapool handle";
  return lp->errmsg ? lp->errmsg : "out of memory (the message was lost)";
}

int luapool_open(const luapool_config *cfg, luapool **out) {
  if (!out) return LUAPOOL_EINVAL;
  *out = NULL;
  if (!cfg) return LUAPOOL_EINVAL;
  int rc = lp_engine_new(cfg, out);
  if (rc == 0) {
    (*out)->tick = lp_figures_tick; /* stats and progress, while the host waits */
    (*out)->open_lib = lp_lib_open; /* require "luapool" in every worker */
  }
  return rc;
}

int luapool_add_pool(luapool *lp, const char *name, const char *spec) {
  if (!lp_engine_is_open(lp) || !name || !spec) return LUAPOOL_EINVAL;
  return lp_engine_add_pool(lp, name, spec);
}

int luapool_register_module(luapool *lp, const char *name, luapool_open_fn open) {
  if (!lp_engine_is_open(lp) || !name || !open) return LUAPOOL_EINVAL;
  return lp_engine_add_module(lp, name, open);
}

/* Loads the script: first what the layers above the core add to a run, the
 * places of the pools that run elsewhere (worker processes) and --trace. */
static int load(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (lp->phase == LP_PHASE_OPEN) {
    int rc = lp_broker_attach(lp);
    if (rc == 0) rc = lp_procs_attach(lp);
    if (rc != 0) return rc;
    if (lp->cfg.trace_path && !lp->trace) lp_trace_open(lp); /* -1: lp_trace_close says so */
  }
  return lp_engine_load(lp, chunk, len, chunkname);
}

int luapool_load_string(luapool *lp, const char *chunk, size_t len, const char *chunkname) {
  if (!lp_engine_is_open(lp) || !chunk) return LUAPOOL_EINVAL;
  return load(lp, chunk, len, chunkname ? chunkname : "=script");
}

int luapool_load_file(luapool *lp, const char *path) {
  if (!lp_engine_is_open(lp) || !path) return LUAPOOL_EINVAL;
  FILE *f = fopen(path, "rb");
  if (!f) return lp_engine_error(lp, LUAPOOL_ESCRIPT, "cannot open %s: %s", path, strerror(errno));
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int rd_err = ferror(f);
  fclose(f);
  if (!buf) return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory reading %s", path);
  if (rd_err) {
    free(buf);
    return lp_engine_error(lp, LUAPOOL_ESCRIPT, "cannot read %s", path);
  }
  /* Skip a first line starting with '#', as lua does. */
  size_t skip = 0;
  if (len > 0 && buf[0] == '#') {
    while (skip < len && buf[skip] != '\n') skip++;
  }
  size_t nlen = strlen(path) + 2;
  char *chunkname = malloc(nlen);
  if (!chunkname) {
    free(buf);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  snprintf(chunkname, nlen, "@%s", path);
  /* Keep the line count right when a '#' line was skipped. */
  int rc = load(lp, buf + skip, len - skip, chunkname);
  free(chunkname);
  free(buf);
  return rc;
}

int luapool_has_function(luapool *lp, const char *name) {
  if (!lp_engine_is_open(lp) || !name) return 0;
  return lp_engine_defines(lp, name);
}

int luapool_functions(luapool *lp, const char *const **names) {
  if (!lp_engine_is_open(lp) || !names) return LUAPOOL_EINVAL;
  *names = (const char *const *)lp->defined;
  return lp->ndefined;
}

void luapool_task_opts_init(luapool_task_opts *opts) {
  if (!opts) return;
  opts->priority = 0;
  opts->timeout = -1;
  opts->retries = -1;
  opts->pool = NULL;
}

int luapool_submit(luapool *lp, const char *fn, int argc, const char *const *argv) {
  if (!lp_engine_is_open(lp) || !fn || argc < 0 || (argc > 0 && !argv)) return LUAPOOL_EINVAL;
  lp_buf args;
  lp_buf_init(&args);
  int bad = lp_pack_begin(&args, (uint32_t)argc) != 0;
  for (int i = 0; i < argc && !bad; i++)
    bad = lp_pack_put_string(&args, argv[i], strlen(argv[i])) != 0;
  if (bad) {
    lp_buf_free(&args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  return lp_engine_submit(lp, fn, &args, NULL, NULL);
}

int luapool_submit_values(luapool *lp, const char *fn, const luapool_values *args,
                          luapool_future **out) {
  return luapool_submit_opts(lp, fn, args, NULL, out);
}

int luapool_submit_opts(luapool *lp, const char *fn, const luapool_values *args,
                        const luapool_task_opts *opts, luapool_future **out) {
  if (out) *out = NULL;
  if (!lp_engine_is_open(lp) || !fn) return LUAPOOL_EINVAL;
  lp_buf msg;
  lp_buf_init(&msg);
  int rc = lp_value_message(args, &msg);
  if (rc != 0) {
    lp_buf_free(&msg);
    return rc == LUAPOOL_EINVAL
               ? lp_engine_error(lp, rc, "the arguments are incomplete: a table is not full")
               : lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  return lp_future_submit(lp, fn, &msg, opts, out);
}

void luapool_cancel(luapool *lp) {
  if (lp_engine_is_open(lp)) lp_engine_cancel(lp);
}

void luapool_interrupt(luapool *lp) {
  if (lp) atomic_store(&lp->interrupted, 1);
}

int luapool_wait(luapool *lp, double timeout) {
  if (!lp_engine_is_open(lp)) return LUAPOOL_EINVAL;
  return lp_engine_wait(lp, timeout, NULL, NULL);
}

int luapool_close(luapool *lp) {
  if (!lp) return 0;
  if (!lp_engine_unlist(lp)) return LUAPOOL_EINVAL;
  lp_engine_drain(lp);
  /* Before the report goes: a detached future keeps its text, and a failure
   * nobody awaited is still reported. */
  lp_future_detach_all(lp);
  lp_engine_stop(lp);
  lp_trace_close(lp); /* the workers are joined: their events can be read */
  lp_sync_free(lp);
  lp_engine_free(lp);
  return 0;
}

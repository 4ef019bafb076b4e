/*
 * exe.c - which program a worker process runs.
 *
 * The luapool binary runs itself (/proc/self/exe, set by main.c). A host
 * program linked with libluapool, or a lua5.4 that loaded luapool.so, runs
 * the luapool binary installed with the library: the file that holds this
 * code is found with dladdr, and the binary is looked for at the path from
 * the install's library directory (or the Lua module's directory) to its bin
 * directory, fixed at configure time. A copy installed under any prefix, or
 * moved whole, so finds its own binary. Only when neither is there does it
 * fall back to the bin directory of the configured prefix.
 * LUAPOOL_WORKER_EXE overrides it all.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "proc.h"

#ifndef LUAPOOL_BINDIR
#define LUAPOOL_BINDIR "/usr/local/bin"
#endif
#ifndef LUAPOOL_LIB_TO_BIN
#define LUAPOOL_LIB_TO_BIN "../bin"
#endif
#ifndef LUAPOOL_CMOD_TO_BIN
#define LUAPOOL_CMOD_TO_BIN "../../../bin"
#endif

const char *lp_worker_exe;

/* Whether dir/rel/luapool is an executable file; writes its path to out. */
static int try_beside(char *out, size_t size, const char *dir, const char *rel) {
  int n = snprintf(out, size, "%s/%s/luapool", dir, rel);
  return n > 0 && (size_t)n < size && access(out, X_OK) == 0;
}

void lp_exe_worker(char *out, size_t size) {
  const char *env = getenv("LUAPOOL_WORKER_EXE");
  if (env && *env) {
    snprintf(out, size, "%s", env);
    return;
  }
  if (lp_worker_exe) {
    snprintf(out, size, "%s", lp_worker_exe);
    return;
  }
  Dl_info info;
  char path[PATH_MAX];
  /* Any address of this file names the object it was linked into. */
  if (dladdr((void *)&lp_worker_exe, &info) && info.dli_fname && realpath(info.dli_fname, path)) {
    char *slash = strrchr(path, '/');
    if (slash) {
      *slash = '\0';
      if (try_beside(out, size, path, LUAPOOL_LIB_TO_BIN) ||
          try_beside(out, size, path, LUAPOOL_CMOD_TO_BIN))
        return;
    }
  }
  snprintf(out, size, "%s/luapool", LUAPOOL_BINDIR);
}

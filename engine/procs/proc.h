/*
 * proc.h - worker processes: the engine's side (procs.c, and the files
 * that share procs.h) and the side of the process itself (procworker.c,
 * and the files that share link.h).
 */
#ifndef LP_PROC_H
#define LP_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct luapool;

/* Engine side: worker processes are the place (core/place.h) of every
 * pool configured with processes. Attaches an unstarted place to each such
 * pool, before the engine starts its places: 0 or LUAPOOL_ENOMEM with the
 * message set. */
int lp_procs_attach(struct luapool *eng);

/* The program run as a worker process (`luapool __worker`); the luapool
 * binary points it at itself. NULL (a host program): exe.c finds it. */
extern const char *lp_worker_exe;

/* Writes the path of the program to run as a worker process into out
 * (exe.c): LUAPOOL_WORKER_EXE, else lp_worker_exe, else the luapool binary
 * installed with the library that holds the engine. */
void lp_exe_worker(char *out, size_t size);

/* Starts `exe` as a worker process (`luapool __worker`) with a socket on
 * its fd 3, and writes `init` (an INIT frame) to it: 0 with *pid and *fd
 * (the engine's end of the socket), or -1. */
struct lp_buf;
int lp_process_start(const char *exe, const struct lp_buf *init, pid_t *pid, int *fd);

/* Process side: the main of `luapool __worker`, reading frames on in_fd and
 * writing frames on out_fd. Returns the process's exit status. */
int lp_procworker_main(int in_fd, int out_fd);
#endif

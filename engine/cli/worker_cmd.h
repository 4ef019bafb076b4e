/*
 * worker_cmd.h - `luapool worker` (worker_cmd.c).
 */
#ifndef LP_WORKER_CMD_H
#define LP_WORKER_CMD_H

/* argv: what follows `worker`; cpus: the default of --workers. Returns the
 * exit status. */
int lp_cmd_worker(int argc, char **argv, int cpus);

#endif

"""Celery 5 on Redis: the job queue luapool's broker benchmarks are compared against.

    python3 celery_bench.py REDIS_URL MODES [N] [CHUNK_N]

MODES is a comma-separated list of delay, chunks, tree, latency (or all).
Starts its own celery worker (prefork, concurrency 2) against REDIS_URL,
waits until it answers, runs each mode and prints one JSON line:
  delay      N trivial tasks by .delay(), every result gathered: jobs/s
  chunks     CHUNK_N trivial tasks in chunks of 100 (task.chunks): jobs/s
  tree       1,101 jobs: a chord of 100 chords of 10 leaves each; every
             parent runs after its children: wall seconds
  latency    enqueue-to-start of one task on an idle worker: the median of
             50, in ms (CLOCK_MONOTONIC in both processes, same machine)
then stops the worker. Debian's python3-celery and python3-redis install
into the system's /usr/bin/python3, not into another python3 on the PATH.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from celery import Celery, chord, group

# The worker imports this file as the module celery_bench and learns the
# broker from the environment; the tasks' names are explicit so that they
# match whether this file runs as __main__ or is imported.
REDIS_URL = os.environ.get("LUAPOOL_BENCH_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("celery_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)

LATENCY_SAMPLES = 50
LATENCY_PAUSE_S = 0.02
TREE_CHILDREN, TREE_GRANDCHILDREN = 100, 10


@app.task(name="bench.echo")
def echo(x):
    return x


@app.task(name="bench.total")
def total(values):
    """A parent of the tree: runs once all its children have returned."""
    return sum(values) + 1


@app.task(name="bench.started")
def started():
    """The first line of the task body: when the worker started it."""
    return time.monotonic_ns()


def bench_delay(n):
    t0 = time.perf_counter()
    results = [echo.delay(i) for i in range(n)]
    gathered = [r.get(timeout=600) for r in results]
    elapsed = time.perf_counter() - t0
    assert gathered == list(range(n))
    return {"delay_n": n, "delay_jobs_per_s": n / elapsed, "delay_s": elapsed}


def bench_chunks(n):
    t0 = time.perf_counter()
    result = echo.chunks(((i,) for i in range(n)), 100).group().apply_async()
    # join, not get: a group's get (join_native) in Celery 5.2 polls the
    # backend every 0.5 s, which would add up to half a second to the run.
    gathered = [x for chunk in result.join(timeout=600) for x in chunk]
    elapsed = time.perf_counter() - t0
    assert gathered == list(range(n))
    return {"chunks_n": n, "chunks_jobs_per_s": n / elapsed, "chunks_s": elapsed}


def bench_tree():
    # Every grandchild returns 1 and every parent adds 1 to its children's
    # sum, so the root's result counts the jobs that ran: 1,101.
    children = [chord(group(echo.s(1) for _ in range(TREE_GRANDCHILDREN)), total.s())
                for _ in range(TREE_CHILDREN)]
    t0 = time.perf_counter()
    jobs = chord(group(children), total.s()).apply_async().get(timeout=600)
    elapsed = time.perf_counter() - t0
    assert jobs == 1 + TREE_CHILDREN * (1 + TREE_GRANDCHILDREN), jobs
    return {"tree_jobs": jobs, "tree_s": elapsed}


def bench_latency():
    samples = []
    for _ in range(LATENCY_SAMPLES):
        time.sleep(LATENCY_PAUSE_S)  # the worker back to waiting on Redis
        enqueued = time.monotonic_ns()
        begun = started.delay().get(timeout=60)
        samples.append((begun - enqueued) / 1e6)
    return {"latency_ms": statistics.median(samples), "latency_min_ms": min(samples),
            "latency_samples": len(samples), "latency_pause_ms": LATENCY_PAUSE_S * 1000}


def settle():
    """One task, untimed, between modes. A result's get unsubscribes from its
    channel, but the client reads Redis's replies to those unsubscribes only
    at its next get: after the 'delay' mode's thousands of them, that would
    land on the next mode's clock (the tree twice as slow)."""
    assert echo.delay(0).get(timeout=60) == 0


def start_worker(url):
    # PYTHONWARNINGS: the worker warns that it runs as root, which CI does.
    env = dict(os.environ, LUAPOOL_BENCH_REDIS=url, PYTHONWARNINGS="ignore")
    here = os.path.dirname(os.path.abspath(__file__))
    # Gossip, mingle and heartbeats are chatter between workers of a cluster;
    # without them a lone worker starts faster and runs the same.
    cmd = [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--pool", "prefork",
           "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
           "--without-heartbeat"]
    # Its own process group, so that a worker that does not stop can be
    # killed with its pool.
    worker = subprocess.Popen(cmd, cwd=here, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=sys.stderr)
    # Ready when its pool processes have run tasks.
    try:
        assert [r.get(timeout=60) for r in [echo.delay(i) for i in range(20)]] == list(range(20))
    except BaseException:
        stop_worker(worker)
        raise
    return worker


def stop_worker(worker):
    """A warm shutdown: the worker stops its pool itself; its whole group is
    killed only if it does not finish in time."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def main():
    if len(sys.argv) < 3:
        sys.stderr.write("usage: celery_bench.py REDIS_URL MODES [N] [CHUNK_N]\n")
        sys.exit(2)
    url, modes = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    chunk_n = int(sys.argv[4]) if len(sys.argv) > 4 else 4 * n
    modes = ["delay", "chunks", "tree", "latency"] if modes == "all" else modes.split(",")
    app.conf.broker_url = app.conf.result_backend = url
    figures = {"tool": "celery", "version": __import__("celery").__version__}
    worker = start_worker(url)
    try:
        for mode in modes:
            if mode == "delay":
                figures.update(bench_delay(n))
            elif mode == "chunks":
                figures.update(bench_chunks(chunk_n))
            elif mode == "tree":
                figures.update(bench_tree())
            elif mode == "latency":
                figures.update(bench_latency())
            else:
                raise SystemExit(f"celery_bench.py: unknown mode {mode}")
            settle()
    finally:
        stop_worker(worker)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Python's concurrent.futures baselines: submit rate of trivial tasks."""
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor


def noop():
    return None


def main():
    kind, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    executor = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
    t0 = time.perf_counter()
    with executor(max_workers=workers) as ex:
        futures = [ex.submit(noop) for _ in range(n)]
        for f in futures:
            f.result()
    print(f"{time.perf_counter() - t0:.6f}")


if __name__ == "__main__":
    main()

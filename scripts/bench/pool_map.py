"""multiprocessing.Pool.map baseline for fibmap.lua: the same calls."""
import sys
import time
from multiprocessing import Pool


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main():
    count, workers, chunksize = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    nums = [15 + i % 6 for i in range(1, count + 1)]
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        total = sum(pool.map(fib, nums, chunksize=chunksize))
    print(f"{time.perf_counter() - t0:.6f} {total}")


if __name__ == "__main__":
    main()

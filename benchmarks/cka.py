"""CKA cost: linear CKA in feature space vs through the Gram, and a 6×6 minibatch layer matrix.

    python benchmarks/cka.py [--budget 60] [--max-gib 8] [--threads 2]

1. Linear CKA of two float32 [n, d] arrays, n ∈ {1k, 10k, 50k} × d ∈ {64, 512, 4096}, with
   each form forced (feature space: three d×d products, O(n·d²); Gram: two n×n Grams,
   O(n²·d)), and the form `linear_cka` picks by itself (by min(n, d)). Time is the best
   of up to three calls; peak memory is the largest rise of the process RSS during a
   call, sampled every millisecond. A call whose estimated time (from the measured
   float64 GEMM rate) is over --budget seconds, or whose memory is over --max-gib, is
   not run: its estimate is printed in brackets instead.
2. A 6×6 layer matrix with the minibatch estimator at n = 50,000 (batches of 256;
   widths 64…2048 on each side), features generated batch by batch as a model would
   produce them, so memory stays flat; the same at n = 10,000 shows it does not grow.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time

import numpy as np
import torch

from kdcli.metrics.cka import MinibatchCKA, choose_form, linear_cka

PAGE = os.sysconf("SC_PAGE_SIZE")


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS at once (a fixed 8 MiB mmap threshold
    instead of the adaptive one, which grows to 32 MiB), so the RSS rise of a call measures
    what it allocates, not what earlier calls left in the heap. Smaller blocks (a minibatch's)
    stay in the heap, as usual, so their reuse costs no page faults."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD


class PeakRSS:
    """The largest rise of this process's resident memory while the block runs."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30


def gemm_rate() -> float:
    """float64 FLOP/s of a [n, 512]ᵀ[n, 512] product, what the feature-space form runs."""
    x = torch.randn(20000, 512, dtype=torch.float64)
    x.T @ x
    t = time.perf_counter()
    x.T @ x
    return 2 * 512 * 512 * 20000 / (time.perf_counter() - t)


def estimate(form: str, n: int, d: int, rate: float) -> tuple[float, float]:
    """(seconds, GiB) of one call: float64 centred copies of x and y, then the products."""
    if form == "features":
        flops, extra = 3 * 2 * d * d * n, 3 * 8 * d * d
    else:
        flops, extra = 2 * 2 * n * n * d, 2 * 8 * n * n
    return flops / rate + 4 * n * d * 8 / 2e9, (2 * 8 * n * d + extra) / 2**30


def measure(x, y, form: str) -> tuple[float, float, float]:
    best, gib = float("inf"), 0.0
    for _ in range(3):
        with PeakRSS() as mem:
            t = time.perf_counter()
            value = linear_cka(x, y, form=form)
            elapsed = time.perf_counter() - t
        best, gib = min(best, elapsed), max(gib, mem.gib)
        if best > 2.0:  # one call is enough to time a slow one
            break
    return best, gib, value


def linear_table(args, rate: float) -> None:
    print(f"float64 GEMM rate: {rate / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads\n")
    print(f"{'n':>6} {'d':>5}  {'features: s':>12} {'GiB':>6}  {'gram: s':>10} {'GiB':>6}  "
          f"{'chosen':>8}  {'chosen ≤ other':>14}")
    for n in (1000, 10000, 50000):
        for d in (64, 512, 4096):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, d, generator=g)
            y = (x[:, torch.randperm(d, generator=g)] + torch.randn(n, d, generator=g)).contiguous()
            cells, times, estimated = [], {}, set()
            for form in ("features", "gram"):
                secs, gib = estimate(form, n, d, rate)
                if secs > args.budget or gib > args.max_gib:
                    cells += [f"[~{secs:.3g}]", f"[~{gib:.2g}]"]
                    times[form] = secs
                    estimated.add(form)
                    continue
                t, mem, _ = measure(x, y, form)
                cells += [f"{t:.3g}", f"{mem:.2f}"]
                times[form] = t
            chosen = choose_form(n, d)
            other = "gram" if chosen == "features" else "features"
            ok = "yes" if times[chosen] <= times[other] else f"no ({times[other] / times[chosen]:.2f}×)"
            ok += " (est.)" if estimated else ""
            print(f"{n:>6} {d:>5}  {cells[0]:>12} {cells[1]:>6}  {cells[2]:>10} {cells[3]:>6}  "
                  f"{chosen:>8}  {ok:>14}", flush=True)
            del x, y
    print("[bracketed]: estimated from the GEMM rate and not run (over --budget or --max-gib)\n")


def minibatch_matrix(n: int, batch: int = 256) -> tuple[float, float, float, np.ndarray]:
    """Seconds in MinibatchCKA.update, total seconds, peak GiB, and the 6×6 matrix."""
    widths = (64, 128, 256, 512, 1024, 2048)
    g = torch.Generator().manual_seed(0)
    maps_a = [torch.randn(32, w, generator=g) for w in widths]
    maps_b = [torch.randn(32, w, generator=g) for w in widths]
    acc = MinibatchCKA()
    in_update = 0.0
    with PeakRSS() as mem:
        start = time.perf_counter()
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), 32, generator=g)  # the shared "input" structure
            xs = [torch.relu(z @ m + 0.5 * torch.randn(len(z), m.shape[1], generator=g)) for m in maps_a]
            ys = [torch.relu(z @ m + 0.5 * torch.randn(len(z), m.shape[1], generator=g)) for m in maps_b]
            t = time.perf_counter()
            acc.update(xs, ys)
            in_update += time.perf_counter() - t
        total = time.perf_counter() - start
    return in_update, total, mem.gib, acc.matrix()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60.0, help="largest estimated seconds of one call")
    parser.add_argument("--max-gib", type=float, default=8.0, help="largest estimated memory of one call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    return_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cores available: {len(os.sched_getaffinity(0))}, torch threads: {torch.get_num_threads()}, "
          f"load average: {os.getloadavg()[0]:.1f}\n")
    linear_table(args, gemm_rate())

    print("minibatch CKA, 6×6 layers (widths 64…2048 per side), batches of 256, features streamed:")
    for n in (10000, 50000):
        in_update, total, gib, m = minibatch_matrix(n)
        print(f"  n = {n:>6}: {in_update:.1f} s in the estimator ({total:.1f} s with generating the "
              f"features), peak memory +{gib:.3f} GiB, CKA range {m.min():.3f}…{m.max():.3f}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other processes on these cores "
          "slow the multi-threaded products, small ones most)")


if __name__ == "__main__":
    main()

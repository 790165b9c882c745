"""KD loss backends side by side: median forward+backward time and peak extra memory.

    python benchmarks/kd_loss.py [--repeats 7] [--threads N] [--skip-gpu] [--skip-cpu]
                                 [--gpu-shapes 4096x32000,16384x128256]

CPU (float32): 4096×10, 4096×100, 4096×1000, 512×32000, 2048×32000, for eager,
torch.compile of eager, fused, and fused with compilation switched off (what
compiling buys). GPU, when CUDA is present (bfloat16 and float32): N ∈ {1024,
4096, 8192} × V ∈ {32000, 128256}, for eager, torch.compile of eager and triton,
with the bandwidth achieved under the 3-accesses-per-element model (read s, read
t, write ds) as a percentage of the card's peak (--peak-gbps, or a table of
known cards), and Liger-Kernel's LigerKLDIVLoss on the same rows when the
liger_kernel package is installed (KL(t ‖ s) of log-probabilities it is given:
the log-softmaxes are part of its time).

Backends are timed in turn within each repeat, so drift in a shared machine's
load spreads over all of them. "peak extra" is the most memory allocated at once
during one forward+backward beyond the inputs, in units of the gradient's size
(the floor for any backend that returns a gradient); on the CPU it comes from
the profiler's allocation timeline. First-call times include compilation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdcli.losses import eager, fused

CPU_SHAPES = [(4096, 10), (4096, 100), (4096, 1000), (512, 32000), (2048, 32000)]
GPU_SHAPES = [(n, v) for n in (1024, 4096, 8192) for v in (32000, 128256)]
PEAK_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
             "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
             "A100 80GB PCIe": 1935, "L40S": 864, "L4": 300, "RTX 4090": 1008}
TAU = 2.0


def _kwargs():
    return dict(tau=TAU, alpha=1.0, labels=None, mask=None, label_smoothing=0.0)


def backends(device: str) -> dict:
    compiled_eager = torch.compile(eager.eager_loss)

    def fused_uncompiled(s, t, **kw):
        return fused.fused_loss(s, t, compiled=False, **kw)

    if device == "cpu":
        return {"eager": eager.eager_loss, "compiled eager": compiled_eager,
                "fused": fused.fused_loss, "fused, not compiled": fused_uncompiled}
    from kdcli.losses.triton_kd import triton_loss

    fns = {"eager": eager.eager_loss, "compiled eager": compiled_eager, "triton": triton_loss}
    try:
        from liger_kernel.transformers import LigerKLDIVLoss
    except ImportError:
        return fns
    liger = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def liger_kd(s, t, *, tau, **_):  # τ²·KL(t/τ ‖ s/τ), averaged over rows, as the others
        return tau * tau * liger(torch.log_softmax(s.float() / tau, -1), torch.log_softmax(t.float() / tau, -1))
    return {**fns, "liger KLDiv": liger_kd}


def step(fn, s, t) -> None:
    s.grad = None
    fn(s, t, **_kwargs()).backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, s, t, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(fn, s, t)
    sync(device)
    return time.perf_counter() - start


def peak_extra_bytes(fn, s, t, device) -> int:
    s.grad = None
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(fn, s, t)
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler._memory_profiler import Action

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        step(fn, s, t)
    live, current, peak = {}, 0, 0
    for _, action, key, size in prof._memory_profile().timeline:
        key = key[0] if isinstance(key, tuple) else key
        if action == Action.CREATE:
            live[key], current = size, current + size
        elif action == Action.DESTROY and key in live:  # tensors made before the step don't count
            current -= live.pop(key)
        peak = max(peak, current)
    return peak


def measure(device: str, shapes, dtypes, repeats: int, peak_gbps: float | None) -> None:
    fns = backends(device)
    header = f"{'shape':>12} {'dtype':>8} {'backend':>20} {'median ms':>10} {'first ms':>9} {'peak extra':>11}"
    if device == "cuda":
        header += f" {'GB/s':>7} {'% peak':>7}"
    print(header)
    for n, v in shapes:
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(0)
            s = (3 * torch.randn(n, v, generator=g, device=device)).to(dtype).requires_grad_()
            t = (3 * torch.randn(n, v, generator=g, device=device)).to(dtype)
            first, oom = {}, []
            for name, fn in fns.items():
                try:
                    first[name] = timed(fn, s, t, device)
                except torch.OutOfMemoryError:  # eager at 16,384 × 128,256 in fp32 needs several copies
                    oom.append(name)
                    s.grad = None
                    torch.cuda.empty_cache()
                    print(f"{f'{n}x{v}':>12} {str(dtype).removeprefix('torch.'):>8} {name:>20} out of memory", flush=True)
            live = {name: fn for name, fn in fns.items() if name not in oom}
            times = {name: [] for name in live}
            for _ in range(repeats):
                for name, fn in live.items():
                    times[name].append(timed(fn, s, t, device))
            grad_bytes = s.numel() * s.element_size()
            for name, fn in live.items():
                ms = 1e3 * statistics.median(times[name])
                extra = peak_extra_bytes(fn, s, t, device) / grad_bytes
                line = (f"{f'{n}x{v}':>12} {str(dtype).removeprefix('torch.'):>8} {name:>20} "
                        f"{ms:10.2f} {1e3 * first[name]:9.0f} {extra:10.2f}x")
                if device == "cuda":
                    gbps = 3 * grad_bytes / (ms / 1e3) / 1e9
                    line += f" {gbps:7.0f} {100 * gbps / peak_gbps:6.1f}%" if peak_gbps else f" {gbps:7.0f} {'?':>7}"
                print(line, flush=True)
            del s, t


def card_peak_gbps(override: float | None) -> float | None:
    if override:
        return override
    name = torch.cuda.get_device_name()
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="the GPU's peak memory bandwidth")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--gpu-shapes", default=None, help="N×V list, e.g. 4096x32000,16384x128256")
    args = parser.parse_args()
    shapes = GPU_SHAPES
    if args.gpu_shapes:
        shapes = [tuple(int(v) for v in item.split("x")) for item in args.gpu_shapes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        print(f"CPU, {torch.get_num_threads()} threads, tau={TAU}, alpha=1, {args.repeats} repeats; "
              f"fused compiles at N·V >= {fused.COMPILE_MIN_ELEMENTS}")
        measure("cpu", CPU_SHAPES, [torch.float32], args.repeats, None)
    if args.skip_gpu:
        return
    if not torch.cuda.is_available():
        print("GPU: no CUDA device here; GPU figures not measured")
        return
    peak = card_peak_gbps(args.peak_gbps)
    print(f"\nGPU {torch.cuda.get_device_name()}, peak {peak or '?'} GB/s; "
          "GB/s = 3·N·V·bytes / median time (read s, read t, write ds)")
    measure("cuda", shapes, [torch.bfloat16, torch.float32], args.repeats, peak)


if __name__ == "__main__":
    main()

"""Training throughput of the models kdcli's examples train, per --precision: a resnet20 CIFAR-10
teacher step (images/s; channels_last on CUDA, as kdcli trains it) and the example LM student
(`gpt` 2 layers × 48, V = 1,024, windows of 64 tokens; tokens/s), on synthetic batches resident
on the device.

    python benchmarks/gpu_throughput.py [--device cuda] [--steps 50] [--compile]

On a CPU (no CUDA) it runs a few steps at fp32 and bf16 (fp16 needs CUDA): it checks that the
code runs, its figures say little. Prints the median step time over --steps steps after 5
warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kdcli.models import build_model
from kdcli.train.loop import AUTOCAST


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_step(model, x, y, precision: str, steps: int, device: torch.device, compile_: bool) -> float:
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    dtype = AUTOCAST[precision]
    times = []
    for i in range(5 + steps):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync(device)
        if i >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; median of {args.steps} steps after 5 warm-up steps; compile={args.compile}")
    torch.manual_seed(0)
    batch = 128
    for precision in precisions:
        model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).to(device)
        x = torch.randn(batch, 3, 32, 32, device=device)
        if cuda:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        t = median_step(model, x, y, precision, args.steps, device, args.compile)
        print(f"resnet20 CIFAR-10 teacher, batch {batch}, {precision}: {t * 1e3:.2f} ms/step, "
              f"{batch / t:,.0f} images/s", flush=True)
    windows, block, vocab = 32, 64, 1024
    for precision in precisions:
        model = build_model("gpt", num_classes=vocab, input_shape=(block,), n_layer=2, n_embd=48, n_head=2).to(device)
        tokens = torch.randint(0, vocab, (windows, block + 1), device=device)
        t = median_step(model, tokens[:, :-1], tokens[:, 1:], precision, args.steps, device, args.compile)
        print(f"LM student gpt 2×48 (V={vocab}, T={block}), {windows} windows, {precision}: {t * 1e3:.2f} ms/step, "
              f"{windows * block / t:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()

"""What checking costs: sha256 of an artifact file, a checkpoint's content hash and write, and
reading a logits split with its checks (page checksums, content sha256, finiteness).

    python benchmarks/integrity.py [--mb 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdcli.io.checkpoint import save_tensors
from kdcli.io.hashing import sha256_file
from kdcli.io.logits import read_logits, write_logits
from kdcli.train.state import content_sha256


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.mb * 2**20 // 4
    tensors = {f"w{i}": torch.randn(n // 8) for i in range(8)}
    gb = args.mb / 1024
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "checkpoint.safetensors"
        write = timed(lambda: save_tensors(path, tensors, {"format": "bench"}))
        file_hash = timed(lambda: sha256_file(path))
        content = timed(lambda: content_sha256(tensors))
        print(f"{args.mb} MB of float32 tensors, 1 thread, median of 3")
        print(f"checkpoint write (safetensors, atomic): {write / gb:6.2f} s per GB")
        print(f"sha256 of the file                    : {file_hash / gb:6.2f} s per GB")
        print(f"content sha256 of the tensors         : {content / gb:6.2f} s per GB")
        rows = args.mb * 2**20 // (4 * 1000)
        logits = np.random.default_rng(0).standard_normal((rows, 1000), dtype=np.float32)
        lpath = Path(root) / "logits.parquet"
        write_logits(lpath, {"train": (np.arange(rows), logits), "test": (np.arange(10), logits[:10])},
                     metadata={})
        read = timed(lambda: read_logits(lpath, "train"))
        print(f"read a logits split with its checks   : {read / gb:6.2f} s per GB ({rows} rows x 1000)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The GPU path in one go (its timeouts add up to under 6 minutes; not yet run on a GPU): the Triton KD kernel against eager,
# compiled eager and (when it installs) Liger-Kernel's KL loss at 4096×32,000 and 16,384×128,256
# in bf16 and fp32, as time and as a share of the card's peak memory bandwidth; resnet20 CIFAR-10
# teacher images/s and the example LM student's tokens/s at fp32, bf16 and fp16; the CUDA tests.
# Without a GPU it runs its CPU part, so that it stays runnable: the throughput script, a few
# steps at fp32 and bf16 (its figures then say little).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the project's venv
set -uo pipefail
PY=${PY:-python}
cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
echo "== $(date -u +%FT%TZ) $($PY -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")')"
if (( cuda )); then
  $PY -c 'import liger_kernel' 2>/dev/null || timeout 20 $PY -m pip install --quiet liger-kernel 2>/dev/null \
    || echo "(liger-kernel does not install here: its column is left out)"
  echo "== KD loss: forward + backward (median of 5), GB/s = 3·N·V·bytes / time"
  timeout 180 $PY benchmarks/kd_loss.py --skip-cpu --repeats 5 --gpu-shapes 4096x32000,16384x128256
  echo "== training throughput"
  timeout 90 $PY benchmarks/gpu_throughput.py --steps 50
  echo "== GPU tests"
  timeout 60 $PY -m pytest -q -m gpu -p no:cacheprovider
else
  echo "== no CUDA: CPU parts only (kernel timings and GPU tests need a GPU)"
  timeout 300 $PY benchmarks/gpu_throughput.py --device cpu --steps 3
fi
echo "== DDP: not measurable on one GPU (one process per GPU); tests/test_ddp.py checks it on the CPU (gloo)"

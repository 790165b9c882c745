#!/usr/bin/env bash
# κ beyond 1: students that see MORE data than the teacher (fresh MNIST-1D samples),
# to find where distillation stops helping (the crossover κ*).
#
#   bash examples/kappa_beyond_one.sh
#
# The κ sweep with a smaller pool (n_T = 2,000, so κ = 10 stays affordable) and the
# teacher's logits dumped for the (κ_max − 1)·n_T fresh samples the largest student needs.
export OUT=${OUT:-runs/kappa_beyond_one}
export N_TRAIN=${N_TRAIN:-2000}
export KAPPAS=${KAPPAS:-"0.1 0.25 0.5 1 2 5 10"}
kappa_max=$(printf '%s\n' $KAPPAS | sort -g | tail -1)
export EXTRA_TRAIN=${EXTRA_TRAIN:-$(python3 -c "import math; print(max(0, math.floor(($kappa_max - 1) * $N_TRAIN + 1e-9)))")}
exec bash "$(dirname "$0")/kappa_sweep.sh"

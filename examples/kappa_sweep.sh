#!/usr/bin/env bash
# The main job (`make demo`): teacher → logits → paired KD / label-trained students
# over a κ grid and several seeds on the embedded MNIST-1D → PI-vs-κ report.
#
#   bash examples/kappa_sweep.sh            # about 2 minutes on 2 CPU cores
#
# Settings come from the environment (see examples/_common.sh), e.g.
#   OUT=runs/big N_TRAIN=40000 SEEDS="0 1 2 3 4" bash examples/kappa_sweep.sh
# An interrupted sweep picks up where it stopped: completed run dirs are skipped.
source "$(dirname "$0")/_common.sh"

setup_teacher
sweep_students
$KDCLI report "$OUT" --out "$OUT/report"

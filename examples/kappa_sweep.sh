#!/usr/bin/env bash
# The main job: teacher → logits → paired KD / label-trained students over a κ grid
# and several seeds on the embedded MNIST-1D → PI-vs-κ table.
#
#   bash examples/kappa_sweep.sh            # ~4 minutes on 2 CPU cores
#
# Every setting can be overridden from the environment, e.g.
#   OUT=runs/big N_TRAIN=40000 SEEDS="0 1 2 3 4" bash examples/kappa_sweep.sh
# Completed run dirs are skipped, so an interrupted sweep picks up where it stopped.
set -euo pipefail

OUT=${OUT:-runs/kappa_sweep}
N_TRAIN=${N_TRAIN:-10000}           # the teacher's pool n_T
N_TEST=${N_TEST:-4000}
MODEL=${MODEL:-cnn1d}               # teacher and student: self-distillation, the paper's main setting
CHANNELS=${CHANNELS:-32}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-40}
STUDENT_STEPS=${STUDENT_STEPS:-1500} # the same step budget at every κ
KAPPAS=${KAPPAS:-"0.02 0.05 0.1 0.25 1"}
SEEDS=${SEEDS:-"0 1 2"}
TAU=${TAU:-4}
LR=${LR:-3e-3}
KDCLI=${KDCLI:-kdcli}

common=(--lr "$LR" --eval-every 1000000 --quiet)

$KDCLI train-teacher --out "$OUT/teacher" --dataset mnist1d \
    --dataset-arg n_train="$N_TRAIN" --dataset-arg n_test="$N_TEST" \
    --model "$MODEL" --model-arg channels="$CHANNELS" --epochs "$TEACHER_EPOCHS" "${common[@]}"
$KDCLI dump-logits --teacher "$OUT/teacher" --out "$OUT/teacher_logits.parquet" --quiet

for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    echo "κ=$kappa seed=$seed"
    $KDCLI distill --logits "$OUT/teacher_logits.parquet" --out "$OUT/kd/tau$TAU/k$kappa/s$seed" \
        --kappa "$kappa" --seed "$seed" --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" "${common[@]}"
    $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels/k$kappa/s$seed" \
        --kappa "$kappa" --seed "$seed" --steps "$STUDENT_STEPS" "${common[@]}"
  done
done

$KDCLI report "$OUT" --out "$OUT/report"

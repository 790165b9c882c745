#!/usr/bin/env bash
# The κ sweep on CIFAR-10 (JPEG copy, read through `parquet-images`) with a CIFAR
# ResNet teacher: the realistic recipe, with random-crop/flip augmentation and
# therefore ONLINE distillation (the teacher sees the same augmented batch).
#
#   bash examples/cifar10.sh            # resnet20, 200 teacher epochs: sized for a GPU
#   bash examples/cifar10.sh --smoke    # tiny model and a few steps: runs on a CPU
#
# DATA_DIR must hold train.parquet and test.parquet in the Hugging Face image layout.
# Report figures as "CIFAR-10 (JPEG copy)": its pixels are a JPEG re-encoding.
set -euo pipefail
DATA_DIR=${DATA_DIR:-../shared/data/cifar10-jpeg}
OUT=${OUT:-runs/cifar10}
KDCLI=${KDCLI:-kdcli}
if [[ "${1:-}" == "--smoke" ]]; then
  MODEL=${MODEL:-test_resnet}; TEACHER=(--steps "${TEACHER_STEPS:-20}"); STUDENT_STEPS=${STUDENT_STEPS:-5}
  KAPPAS=${KAPPAS:-"0.01 1"}; SEEDS=${SEEDS:-"0"}; BATCH=${BATCH:-64}; OUT=${OUT%/}-smoke
else
  MODEL=${MODEL:-resnet20}; TEACHER=(--epochs "${TEACHER_EPOCHS:-200}"); STUDENT_STEPS=${STUDENT_STEPS:-30000}
  KAPPAS=${KAPPAS:-"0.01 0.05 0.1 0.25 0.5 1"}; SEEDS=${SEEDS:-"0 1 2"}; BATCH=${BATCH:-128}
fi
TAU=${TAU:-4}
THREADS=${THREADS:-$(nproc)}  # CPU threads per run (kdcli's default is 1): a ResNet gains from every idle core
SGD=(--threads "$THREADS" --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --schedule cosine --warmup-epochs 1
     --batch-size "$BATCH" --augment --checkpoint-every "${CHECKPOINT_EVERY:-10m}" --resume --quiet)

$KDCLI train-teacher --out "$OUT/teacher" --dataset parquet-images --data-dir "$DATA_DIR" \
    --model "$MODEL" "${TEACHER[@]}" "${SGD[@]}" --eval-every "${TEACHER_EVAL_EVERY:-20}"
for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    echo "κ=$kappa seed=$seed"
    $KDCLI distill --teacher "$OUT/teacher" --out "$OUT/kd/tau$TAU/k$kappa/s$seed" --kappa "$kappa" \
        --seed "$seed" --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" "${SGD[@]}" --eval-every 0
    $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels/k$kappa/s$seed" --kappa "$kappa" \
        --seed "$seed" --steps "$STUDENT_STEPS" "${SGD[@]}" --eval-every 0
  done
done
$KDCLI report "$OUT" --out "$OUT/report"

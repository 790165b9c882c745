#!/usr/bin/env bash
# The κ sweep on real images: CIFAR-10 (the JPEG copy in ../shared/data/cifar10-jpeg, read
# through `parquet-images`), with random-crop/flip augmentation and therefore ONLINE
# distillation (the teacher sees the student's augmented batch). Sized for 2 CPU cores.
#
#   bash examples/cifar10.sh           # self-distillation: a `cnn` width-16 teacher, students alike
#   bash examples/cifar10.sh small     # the second setting: a smaller student (width 8), same teacher
#   bash examples/cifar10.sh --smoke   # a few steps of each, to check the pipeline
#
# Both settings share OUT (default runs/cifar10) and its teacher; each ends with `kdcli report
# OUT`, whose tables give every student model its own rows. What each costs on 2 cores is in
# README "Reproducing the paper". Every run checkpoints and resumes: run the script again after
# an interruption and it goes on where it stopped.
#
# Settings (environment): DATA_DIR, OUT, WIDTH (teacher and self-distilled students, 16),
# SMALL_WIDTH (8), TEACHER_STEPS (5000), STUDENT_STEPS (1000, the same at every κ), KAPPAS
# ("0.01 0.05 0.2 1"), SEEDS ("0 1 2"), TAU (4), LR (0.05), BATCH (128), WORKERS (processes per
# sweep, 2). Report figures as "CIFAR-10 (JPEG copy)": its pixels are a JPEG re-encoding.
set -euo pipefail
DATA_DIR=${DATA_DIR:-../shared/data/cifar10-jpeg}
OUT=${OUT:-runs/cifar10}
KDCLI=${KDCLI:-kdcli}
SETTING=${1:-self}
case "$SETTING" in
  self|small) ;;
  --smoke) OUT=${OUT%/}-smoke; TEACHER_STEPS=${TEACHER_STEPS:-20}; STUDENT_STEPS=${STUDENT_STEPS:-5}
           KAPPAS=${KAPPAS:-"0.01 1"}; SEEDS=${SEEDS:-"0 1"}; WIDTH=${WIDTH:-4}; BATCH=${BATCH:-64} ;;
  *) echo "Error: setting '$SETTING': expected self, small or --smoke" >&2; exit 2 ;;
esac
if [[ ! -f "$DATA_DIR/train.parquet" ]]; then
  echo "Error: DATA_DIR $DATA_DIR: no train.parquet there (expected the CIFAR-10 JPEG copy)" >&2
  exit 2
fi
WIDTH=${WIDTH:-16}
SMALL_WIDTH=${SMALL_WIDTH:-8}
TEACHER_STEPS=${TEACHER_STEPS:-5000}
STUDENT_STEPS=${STUDENT_STEPS:-1000}
KAPPAS=${KAPPAS:-"0.01 0.05 0.2 1"}
SEEDS=${SEEDS:-"0 1 2"}
TAU=${TAU:-4}
LR=${LR:-0.05}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-2}

# One thread per process (on 2 shared cores a small CNN runs fastest that way); the students of
# a sweep go to WORKERS processes, each loading the data once.
SGD=(--optimizer sgd --lr "$LR" --momentum 0.9 --weight-decay 5e-4 --schedule cosine --warmup-epochs 0
     --batch-size "$BATCH" --augment --checkpoint-every 5m --resume --quiet --threads 1)
POINTS=(--grid "kappa=${KAPPAS// /,}" --grid "seed=${SEEDS// /,}" --point-dir 'k{kappa}/s{seed}'
        --task-index all --workers "$WORKERS")

student_width=$WIDTH
[[ "$SETTING" == small ]] && student_width=$SMALL_WIDTH
name=$SETTING
[[ "$SETTING" == --smoke ]] && name=self

$KDCLI train-teacher --out "$OUT/teacher" --dataset parquet-images --data-dir "$DATA_DIR" \
    --model cnn --model-arg width="$WIDTH" --steps "$TEACHER_STEPS" --eval-every 1000 "${SGD[@]}"
$KDCLI distill --teacher "$OUT/teacher" --out "$OUT/$name/kd/tau$TAU" --model cnn --model-arg width="$student_width" \
    --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" --eval-every 0 "${POINTS[@]}" "${SGD[@]}"
$KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/$name/labels" --model cnn --model-arg width="$student_width" \
    --steps "$STUDENT_STEPS" --eval-every 0 "${POINTS[@]}" "${SGD[@]}"
$KDCLI report "$OUT" --out "$OUT/report"

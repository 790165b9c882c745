#!/usr/bin/env bash
# Submit the κ sweep to slurm: teacher + logits, then the student array, then the report.
#
#   OUT=runs/slurm_sweep bash examples/slurm/submit.sh
set -euo pipefail
here=$(dirname "$0")
export OUT=${OUT:-runs/slurm_sweep} KAPPAS=${KAPPAS:-0.02,0.05,0.1,0.25,1} SEEDS=${SEEDS:-0,1,2}
export N_TRAIN=${N_TRAIN:-10000} TEACHER_EPOCHS=${TEACHER_EPOCHS:-40} KDCLI=${KDCLI:-kdcli}

teacher=$(sbatch --parsable --job-name=kd-teacher --cpus-per-task=2 --wrap "set -e
  $KDCLI train-teacher --out $OUT/teacher --dataset mnist1d --dataset-arg n_train=$N_TRAIN \
      --model cnn1d --epochs $TEACHER_EPOCHS --lr 3e-3 --checkpoint-every 500 --resume --quiet
  $KDCLI dump-logits --teacher $OUT/teacher --out $OUT/teacher_logits.parquet --quiet")
points=$($KDCLI train-labels --out "$OUT/labels" --grid "kappa=$KAPPAS" --grid "seed=$SEEDS" --print-grid)
array=$(sbatch --parsable --dependency=afterok:"$teacher" --array=0-$((2 * points - 1)) "$here/kappa_array.sbatch")
report=$(sbatch --parsable --dependency=afterok:"$array" --job-name=kd-report \
    --wrap "$KDCLI report $OUT --out $OUT/report")
echo "teacher job $teacher, array $array (${points} points × 2 methods), report job $report"

#!/usr/bin/env bash
# Teacher quality against the crossover κ* (the paper's open question 3): teachers of
# different test accuracies on the same pool (the same network trained for fewer epochs),
# each with its own κ sweep of KD students and their label twins. The report's κ* table gains
# each teacher's accuracy and the arm's peak PI, and plots κ* and peak PI against teacher
# accuracy (kappa_star_vs_teacher.png).
#
#   bash examples/teacher_quality.sh        # about 6 minutes on 2 CPU cores
#
# Settings as kappa_sweep.sh (examples/_common.sh), plus TEACHER_EPOCHS_LIST.
OUT=${OUT:-runs/teacher_quality}
source "$(dirname "$0")/_common.sh"
ROOT=${OUT%/}
TEACHER_EPOCHS_LIST=${TEACHER_EPOCHS_LIST:-"1 2 5 10 40"}

for epochs in $TEACHER_EPOCHS_LIST; do
  # one teacher per epoch budget, its logits, its students and their twins under ROOT/e<epochs>
  OUT=$ROOT/e$epochs TEACHER_EPOCHS=$epochs LOGITS=$ROOT/e$epochs/teacher_logits.parquet
  setup_teacher
  sweep_students
done
$KDCLI report "$ROOT" --out "$ROOT/report"

#!/usr/bin/env bash
# Label-smoothing control: is KD's gain just label smoothing? Students trained on
# hard labels smoothed with ε matched to the teacher's mean non-target mass at τ
# (on each student's subset), next to KD at the same κ. Shares OUT with
# kappa_sweep.sh; the report adds the "ls ε=…" arms and the control table.
#
#   bash examples/label_smoothing_control.sh
source "$(dirname "$0")/_common.sh"

setup_teacher
for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    echo "κ=$kappa seed=$seed"
    kd_student "$kappa" "$seed" "$TAU"
    labels_student "$kappa" "$seed"
    $KDCLI train-labels --logits "$LOGITS" --out "$OUT/smoothing/tau$TAU/k$kappa/s$seed" \
        --kappa "$kappa" --seed "$seed" --match-smoothing-tau "$TAU" --steps "$STUDENT_STEPS" "${COMMON[@]}"
  done
done
$KDCLI report "$OUT" --out "$OUT/report"

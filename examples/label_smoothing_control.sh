#!/usr/bin/env bash
# Label-smoothing control: is KD's gain just label smoothing? Students trained on
# hard labels smoothed with ε matched to the teacher's mean non-target mass at τ
# (on each student's subset), next to KD at the same κ. Shares OUT with
# kappa_sweep.sh; the report adds the "ls ε=…" arms and the control table.
#
#   bash examples/label_smoothing_control.sh
source "$(dirname "$0")/_common.sh"

# ε matched to the teacher's mean non-target mass at τ on the student's subset
smoothed_student() {
  $KDCLI train-labels --logits "$LOGITS" --out "$OUT/smoothing/tau$TAU/k$1/s$2" --kappa "$1" --seed "$2" \
      --match-smoothing-tau "$TAU" --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
}

setup_teacher
sweep_pairs smoothed_student
$KDCLI report "$OUT" --out "$OUT/report"

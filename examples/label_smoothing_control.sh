#!/usr/bin/env bash
# Label-smoothing control: is KD's gain just label smoothing? Students trained on
# hard labels smoothed with ε matched to the teacher's mean non-target mass at τ
# (on each student's subset), next to KD at the same κ. Shares OUT with
# kappa_sweep.sh; the report adds the "ls ε=…" arms and the control table.
#
#   bash examples/label_smoothing_control.sh
source "$(dirname "$0")/_common.sh"

setup_teacher
sweep_students
# the label-smoothing arm, ε matched to the teacher's mean non-target mass at τ on each
# student's subset: every point in one process
$KDCLI train-labels --logits "$LOGITS" --out "$OUT/smoothing/tau$TAU" --match-smoothing-tau "$TAU" \
    --steps "$STUDENT_STEPS" "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}"
$KDCLI report "$OUT" --out "$OUT/report"

#!/usr/bin/env bash
# Temperature ablation: τ ∈ {0.1, 1, 3, 5, 10, 20, 100} at a small and a large κ.
# Shares OUT with kappa_sweep.sh by default, so its teacher and label-trained
# students are reused; the report adds the τ × κ table and heatmap.
#
#   bash examples/temperature_ablation.sh
source "$(dirname "$0")/_common.sh"
TAUS=${TAUS:-"0.1 1 3 5 10 20 100"}
ABLATION_KAPPAS=${ABLATION_KAPPAS:-"0.02 1"}

setup_teacher
# every τ × κ × seed KD student in one process, their label twins in another, side by side
KAPPAS=$ABLATION_KAPPAS
POINTS=(--grid "kappa=${KAPPAS// /,}" --grid "seed=${SEEDS// /,}" --task-index all --threads 1)
side_by_side \
  $KDCLI distill --logits "$LOGITS" --out "$OUT/kd" --grid "tau=${TAUS// /,}" "${POINTS[@]}" \
      --point-dir 'tau{tau}/k{kappa}/s{seed}' --alpha 1 --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}" -- \
  $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels" "${POINTS[@]}" --point-dir 'k{kappa}/s{seed}' \
      --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
$KDCLI report "$OUT" --out "$OUT/report"

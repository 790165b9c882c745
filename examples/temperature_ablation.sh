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
for kappa in $ABLATION_KAPPAS; do
  for seed in $SEEDS; do
    labels_student "$kappa" "$seed"
    for tau in $TAUS; do
      echo "κ=$kappa seed=$seed τ=$tau"
      kd_student "$kappa" "$seed" "$tau"
    done
  done
done
$KDCLI report "$OUT" --out "$OUT/report"

#!/usr/bin/env bash
# Feature alignment: CKA between the teacher's and each student's penultimate
# representation on the test split, for KD and label-trained students across κ.
# Shares OUT with kappa_sweep.sh (its students are reused); the report adds the
# CKA-vs-κ table and plot.
#
#   bash examples/cka_alignment.sh
source "$(dirname "$0")/_common.sh"
ESTIMATORS=${ESTIMATORS:-"linear debiased"}
est=(); for e in $ESTIMATORS; do est+=(--estimator "$e"); done

setup_teacher
for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    echo "κ=$kappa seed=$seed"
    kd_student "$kappa" "$seed" "$TAU"
    labels_student "$kappa" "$seed"
    $KDCLI cka "$OUT/teacher" "$OUT/kd/tau$TAU/k$kappa/s$seed" --out "$OUT/cka/cka_kd_tau${TAU}_k${kappa}_s${seed}.parquet" "${est[@]}" --quiet
    $KDCLI cka "$OUT/teacher" "$OUT/labels/k$kappa/s$seed" --out "$OUT/cka/cka_labels_k${kappa}_s${seed}.parquet" "${est[@]}" --quiet
  done
done
$KDCLI report "$OUT" --out "$OUT/report"

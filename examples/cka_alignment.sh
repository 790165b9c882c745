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

# CKA of the teacher with both students of a pair (files named cka*.parquet for `report`)
cka_pair() {
  $KDCLI cka "$OUT/teacher" "$OUT/kd/tau$TAU/k$1/s$2" --out "$OUT/cka/cka_kd_tau${TAU}_k$1_s$2.parquet" "${est[@]}" --quiet
  $KDCLI cka "$OUT/teacher" "$OUT/labels/k$1/s$2" --out "$OUT/cka/cka_labels_k$1_s$2.parquet" "${est[@]}" --quiet
}

setup_teacher
sweep_students
for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    cka_pair "$kappa" "$seed"
  done
done
$KDCLI report "$OUT" --out "$OUT/report"

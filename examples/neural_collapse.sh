#!/usr/bin/env bash
# Neural collapse against κ (the paper's open question 1): does KD's feature alignment come
# with collapse? NC1–NC4 of the teacher's and every student's penultimate features, on the
# samples each trained on ("seen") and on the test split, next to CKA with the teacher.
# Shares OUT with kappa_sweep.sh and cka_alignment.sh (their runs and CKA files are reused);
# the report adds the collapse tables and collapse_vs_kappa.png.
#
#   bash examples/neural_collapse.sh        # about 2.5 minutes on 2 CPU cores (the main job's runs included)
source "$(dirname "$0")/_common.sh"

bash "$(dirname "$0")/cka_alignment.sh"  # teacher, students and CKA files (completed ones skipped)
dirs=("$OUT/teacher")
for kappa in $KAPPAS; do
  for seed in $SEEDS; do
    dirs+=("$OUT/kd/tau$TAU/k$kappa/s$seed" "$OUT/labels/k$kappa/s$seed")
  done
done
# one process for every run, one file per grid (another grid on this OUT gets its own); an
# existing file of the same runs and settings is kept (a run redone since is refused: remove the file)
grid="tau${TAU}_k${KAPPAS// /-}_s${SEEDS// /-}"
$KDCLI collapse "${dirs[@]}" --split seen --split test --out "$OUT/collapse/collapse_$grid.parquet" --threads 1 --quiet
$KDCLI report "$OUT" --out "$OUT/report"

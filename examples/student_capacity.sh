#!/usr/bin/env bash
# Student capacity against the crossover κ* (the paper's design trade-off): one teacher
# (cnn1d, CHANNELS wide) distils students narrower, as wide as and wider than itself, and a
# ViT-style transformer student (kdcli/models/vit.py), each with its κ sweep and label twins.
# The report's κ* table gains each student's parameter count, and kappa_star_vs_student.png
# plots κ* and peak PI against it.
#
#   bash examples/student_capacity.sh       # about 8.5 minutes on 2 CPU cores
#
# Settings as kappa_sweep.sh (examples/_common.sh), plus STUDENTS: MODEL:ARG=V,ARG=V entries.
OUT=${OUT:-runs/student_capacity}
source "$(dirname "$0")/_common.sh"
STUDENTS=${STUDENTS:-"cnn1d:channels=8 cnn1d:channels=16 cnn1d:channels=32 cnn1d:channels=64 vit:dim=32,depth=2"}

setup_teacher
for spec in $STUDENTS; do
  model=(--model "${spec%%:*}")
  args=${spec#*:}
  [[ $args == "$spec" ]] && args=""
  for kv in ${args//,/ }; do model+=(--model-arg "$kv"); done
  dir=$OUT/students/${spec//[:=,]/_}
  side_by_side \
    $KDCLI distill --logits "$LOGITS" --out "$dir/kd" --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" \
        "${model[@]}" "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}" -- \
    $KDCLI train-labels --teacher "$OUT/teacher" --out "$dir/labels" --steps "$STUDENT_STEPS" \
        "${model[@]}" "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}"
done
$KDCLI report "$OUT" --out "$OUT/report"

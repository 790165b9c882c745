#!/usr/bin/env bash
# A teacher from another distribution (the paper's next check 2): students train on a shifted
# MNIST-1D (SHIFT: generator arguments, noisier by default) with soft labels from
#   - a teacher trained on that shifted data (the usual setting), and
#   - the main job's teacher, trained on the reference distribution and run online on the
#     shifted inputs (--cross-dataset: an explicit choice, recorded in run.json),
# each next to label-trained twins on the shifted data, over the κ grid. The report gives PI
# and κ* per teacher.
#
#   bash examples/cross_distribution.sh     # about 3 minutes on 2 CPU cores
#
# Settings as kappa_sweep.sh (examples/_common.sh), plus SHIFT (comma-separated KEY=VALUE).
OUT=${OUT:-runs/cross_distribution}
source "$(dirname "$0")/_common.sh"
SHIFT=${SHIFT:-"corr_noise=0.6,iid_noise=0.05"}
ROOT=$OUT
shifted=(); for kv in ${SHIFT//,/ }; do shifted+=(--dataset-arg "$kv"); done

# the reference-distribution teacher (as the main job's), and a teacher of the shifted data
OUT=$ROOT/source LOGITS=$ROOT/source/teacher_logits.parquet
setup_teacher
$KDCLI_WRAP $KDCLI train-teacher --out "$ROOT/target/teacher" --dataset mnist1d --dataset-arg n_train="$N_TRAIN" \
    --dataset-arg n_test="$N_TEST" "${shifted[@]}" --model "$MODEL" --model-arg channels="$CHANNELS" \
    --epochs "$TEACHER_EPOCHS" "${COMMON[@]}"
$KDCLI_WRAP $KDCLI dump-logits --teacher "$ROOT/target/teacher" --out "$ROOT/target/teacher_logits.parquet" \
    --extra-train "$EXTRA_TRAIN" --quiet

# students of the shifted data: from its own teacher (offline) ...
OUT=$ROOT/target LOGITS=$ROOT/target/teacher_logits.parquet
sweep_students
# ... and from the reference teacher, online across distributions
side_by_side \
  $KDCLI distill --teacher "$ROOT/source/teacher" --cross-dataset "${shifted[@]}" --out "$ROOT/cross/kd/tau$TAU" \
      --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}" -- \
  $KDCLI train-labels --teacher "$ROOT/source/teacher" --cross-dataset "${shifted[@]}" --out "$ROOT/cross/labels" \
      --steps "$STUDENT_STEPS" "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}"
$KDCLI report "$ROOT" --out "$ROOT/report"

# Shared by the example scripts (sourced): settings from the environment, the
# teacher and its logits, and one paired KD / label-trained student.
# Completed run dirs are skipped, so examples sharing an OUT reuse each other's runs.
set -euo pipefail

OUT=${OUT:-runs/kappa_sweep}
N_TRAIN=${N_TRAIN:-10000}            # the teacher's pool n_T (MNIST-1D)
N_TEST=${N_TEST:-4000}
MODEL=${MODEL:-cnn1d}                # teacher and student: self-distillation, the paper's main setting
CHANNELS=${CHANNELS:-32}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-40}
STUDENT_STEPS=${STUDENT_STEPS:-1500} # the same step budget at every κ
KAPPAS=${KAPPAS:-"0.02 0.05 0.1 0.25 1"}
SEEDS=${SEEDS:-"0 1 2"}
TAU=${TAU:-4}
LR=${LR:-3e-3}
EXTRA_TRAIN=${EXTRA_TRAIN:-0}        # fresh samples dumped after the pool, for κ > 1
KDCLI=${KDCLI:-kdcli}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-500}  # steps between resumable checkpoints

# Every run checkpoints and passes --resume: a sweep killed mid-run (preempted, Ctrl-C)
# and started again skips completed runs, resumes the interrupted one from its last
# checkpoint (to the same weights) and starts the rest. Students evaluate once, at the end.
COMMON=(--lr "$LR" --checkpoint-every "$CHECKPOINT_EVERY" --resume --quiet)
STUDENT=(--eval-every 0)
LOGITS="$OUT/teacher_logits.parquet"

setup_teacher() {
  $KDCLI train-teacher --out "$OUT/teacher" --dataset mnist1d \
      --dataset-arg n_train="$N_TRAIN" --dataset-arg n_test="$N_TEST" \
      --model "$MODEL" --model-arg channels="$CHANNELS" --epochs "$TEACHER_EPOCHS" "${COMMON[@]}"
  $KDCLI dump-logits --teacher "$OUT/teacher" --out "$LOGITS" --extra-train "$EXTRA_TRAIN" --quiet
}

# kd_student KAPPA SEED TAU: a distilled student (α = 1) from the stored logits
kd_student() {
  $KDCLI distill --logits "$LOGITS" --out "$OUT/kd/tau$3/k$1/s$2" --kappa "$1" --seed "$2" \
      --tau "$3" --alpha 1 --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
}

# labels_student KAPPA SEED: its label-trained twin (same subset, init, batch order, steps)
labels_student() {
  $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels/k$1/s$2" --kappa "$1" --seed "$2" \
      --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
}

# sweep_pairs [CMD]: for every κ in $KAPPAS and seed in $SEEDS, a KD student and its
# label-trained twin, then `CMD KAPPA SEED` if given (a control arm, a CKA measurement).
sweep_pairs() {
  for kappa in $KAPPAS; do
    for seed in $SEEDS; do
      echo "κ=$kappa seed=$seed"
      kd_student "$kappa" "$seed" "$TAU"
      labels_student "$kappa" "$seed"
      if (( $# )); then "$@" "$kappa" "$seed"; fi
    done
  done
}

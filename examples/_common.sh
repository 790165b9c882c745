# Shared by the example scripts (sourced): settings from the environment, the
# teacher and its logits, and one paired KD / label-trained student.
# Completed run dirs are skipped, so examples sharing an OUT reuse each other's runs.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
OUT=${OUT:-runs/kappa_sweep}
settings_defaults
KDCLI=${KDCLI:-kdcli}

# Every run checkpoints and passes --resume: a sweep killed mid-run (preempted, Ctrl-C)
# and started again skips completed runs, resumes the interrupted one from its last
# checkpoint (to the same weights) and starts the rest. Students evaluate once, at the end.
COMMON=(--lr "$LR" --checkpoint-every "$CHECKPOINT_EVERY" --resume --quiet)
STUDENT=(--eval-every 0)
LOGITS="$OUT/teacher_logits.parquet"
KDCLI_WRAP=${KDCLI_WRAP:-}  # a prefix for each kdcli command: examples/slurm/sweep.sbatch sets `resumable`

setup_teacher() {
  $KDCLI_WRAP $KDCLI train-teacher --out "$OUT/teacher" --dataset mnist1d \
      --dataset-arg n_train="$N_TRAIN" --dataset-arg n_test="$N_TEST" \
      --model "$MODEL" --model-arg channels="$CHANNELS" --epochs "$TEACHER_EPOCHS" "${COMMON[@]}"
  $KDCLI_WRAP $KDCLI dump-logits --teacher "$OUT/teacher" --out "$LOGITS" --extra-train "$EXTRA_TRAIN" --quiet
}

# kd_student KAPPA SEED TAU: a distilled student (α = 1) from the stored logits
kd_student() {
  $KDCLI_WRAP $KDCLI distill --logits "$LOGITS" --out "$OUT/kd/tau$3/k$1/s$2" --kappa "$1" --seed "$2" \
      --tau "$3" --alpha 1 --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
}

# labels_student KAPPA SEED: its label-trained twin (same subset, init, batch order, steps)
labels_student() {
  $KDCLI_WRAP $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels/k$1/s$2" --kappa "$1" --seed "$2" \
      --steps "$STUDENT_STEPS" "${STUDENT[@]}" "${COMMON[@]}"
}

# wait_child PID: PID's exit status, waiting again when a trap (a signal passed on) cut the wait short
wait_child() {
  local s=0
  wait "$1" || s=$?
  while (( s > 128 )) && kill -0 "$1" 2>/dev/null; do
    s=0
    wait "$1" || s=$?
  done
  return "$s"
}

# side_by_side CMD1 -- CMD2: two commands at once (each a sweep in one process); fails if either
# does. Ctrl-C or SIGTERM to this script stops both (as SIGTERM: background commands ignore
# SIGINT): each saves a checkpoint of its running point and exits.
side_by_side() {
  local first=() pids=() status=0 s pid
  while [[ $1 != -- ]]; do first+=("$1"); shift; done
  shift
  "${first[@]}" &
  pids+=($!)
  "$@" &
  pids+=($!)
  trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
  for pid in "${pids[@]}"; do
    s=0
    wait_child "$pid" || s=$?
    (( status )) || status=$s
  done
  trap - INT TERM
  return "$status"
}

# Each point of $KAPPAS × $SEEDS in the run dir sweep_pairs gives it (k<κ>/s<seed>), one process
# running every point one after another (torch is imported once), one thread.
POINTS=(--grid "kappa=${KAPPAS// /,}" --grid "seed=${SEEDS// /,}" --point-dir 'k{kappa}/s{seed}'
        --task-index all --threads 1)

# sweep_students: every KD student and its label twin over $KAPPAS × $SEEDS, as `sweep_pairs`
# makes them (the same run dirs, settings and weights), faster: the two arms side by side.
sweep_students() {
  side_by_side \
    $KDCLI distill --logits "$LOGITS" --out "$OUT/kd/tau$TAU" --tau "$TAU" --alpha 1 --steps "$STUDENT_STEPS" \
        "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}" -- \
    $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/labels" --steps "$STUDENT_STEPS" \
        "${POINTS[@]}" "${STUDENT[@]}" "${COMMON[@]}"
}

# sweep_pairs [CMD]: for every κ in $KAPPAS and seed in $SEEDS, a KD student and its
# label-trained twin, then `CMD KAPPA SEED` if given (a control arm, a CKA measurement).
sweep_pairs() {
  for kappa in $KAPPAS; do
    for seed in $SEEDS; do
      kd_student "$kappa" "$seed" "$TAU"
      labels_student "$kappa" "$seed"
      if (( $# )); then "$@" "$kappa" "$seed"; fi
    done
  done
}

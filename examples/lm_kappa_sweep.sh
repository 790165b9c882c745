#!/usr/bin/env bash
# Language modelling (the paper's largest claim): a GPT teacher on complete Shakespeare
# (byte-level BPE trained locally on the train pool), then GPT students trained on a κ
# fraction of its windows, each with its soft labels (online KD, pure distillation) and
# with hard labels, paired over κ and seeds, in two settings:
#   self   the student has the teacher's architecture (self-distillation)
#   small  a smaller student than the teacher
# then one comparison of top-k logit files with online KD at one κ, the teacher-student
# CKA of the self-distillation students, and `report`.
#
#   bash examples/lm_kappa_sweep.sh       # about 30 minutes on 2 CPU cores (README table 7)
#
# Every run uses one thread; the settings' sweeps run side by side, JOBS at a time (default
# 2, one per core of a 2-core machine), each run still its own process and run dir.
# Settings come from the environment, e.g. SEEDS="0 1 2 3 4" KAPPAS="0.01 0.1 1".
# An interrupted sweep picks up where it stopped: completed run dirs are skipped, an
# interrupted one resumes from its checkpoint.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DATA=${DATA:-$HERE/../../shared/data/text}   # a folder of UTF-8 .txt files
FILES=${FILES:-shakespeare_complete_modern.txt}
OOD=${OOD-}                                   # e.g. moby_dick.txt: also tested on it
OUT=${OUT:-runs/lm_kappa_sweep}
VOCAB=${VOCAB:-1024}                          # BPE vocabulary (README: how it was chosen)
BLOCK=${BLOCK:-64}                            # tokens per window
TEACHER=${TEACHER:-"n_layer=3 n_head=4 n_embd=96"}
SMALL=${SMALL:-"n_layer=2 n_head=2 n_embd=48"}
SETTINGS=${SETTINGS-"self small"}             # empty: the teacher only
TEACHER_STEPS=${TEACHER_STEPS:-2000}
STUDENT_STEPS=${STUDENT_STEPS:-300}           # the same step budget at every κ
KAPPAS=${KAPPAS:-"0.01 0.05 0.2 1"}
SEEDS=${SEEDS:-"0 1 2"}
TAU=${TAU:-1}
LR=${LR:-3e-3}
TOPK=${TOPK:-32}                              # top-k logit file for the offline comparison
TOPK_KAPPAS=${TOPK_KAPPAS-0.05}               # κ of that comparison (empty: skipped)
JOBS=${JOBS:-2}                               # sweeps running at once
CKA_SAMPLES=${CKA_SAMPLES-100}                # test windows for teacher-student CKA (empty: none)
KDCLI=${KDCLI:-kdcli}

if [[ ! -d "$DATA" ]]; then
  echo "DATA=$DATA: no such folder (the text corpora of ../shared/data/text)" >&2
  exit 1
fi

args() { for a in $1; do printf -- '--model-arg\n%s\n' "$a"; done; }
mapfile -t TEACHER_ARGS < <(args "$TEACHER")
mapfile -t SMALL_ARGS < <(args "$SMALL")
COMMON=(--lr "$LR" --batch-size 32 --checkpoint-every 500 --resume --quiet --threads 1)
STUDENT=(--steps "$STUDENT_STEPS" --eval-every 0 "${COMMON[@]}")

DATASET=(--dataset text --data-dir "$DATA" --dataset-arg files="$FILES" --dataset-arg vocab="$VOCAB"
         --dataset-arg block="$BLOCK" --dataset-arg test_fraction=0.05)
[[ -n "$OOD" ]] && DATASET+=(--dataset-arg ood="$OOD")

$KDCLI train-teacher --out "$OUT/teacher" "${DATASET[@]}" --model gpt "${TEACHER_ARGS[@]}" \
    --steps "$TEACHER_STEPS" --eval-every 500 "${COMMON[@]}"

# student SETTING: the student's --model-arg flags (none: the teacher's architecture)
student() { if [[ $1 == small && ${#SMALL_ARGS[@]} -gt 0 ]]; then printf '%s\n' "${SMALL_ARGS[@]}"; fi; }

# a failed run stops the script: stop the runs still going beside it too
trap 'kill $(jobs -rp) 2>/dev/null || true' EXIT

# sweep SETTING: a KD student and its label-trained twin for every κ and seed
sweep() {
  local setting=$1 kappa seed
  mapfile -t MODEL < <(student "$setting")
  for kappa in $KAPPAS; do
    for seed in $SEEDS; do
      echo "$setting κ=$kappa seed=$seed"
      $KDCLI distill --teacher "$OUT/teacher" --out "$OUT/$setting/kd/k$kappa/s$seed" "${MODEL[@]}" \
          --kappa "$kappa" --seed "$seed" --tau "$TAU" --alpha 1 "${STUDENT[@]}"
      $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/$setting/labels/k$kappa/s$seed" "${MODEL[@]}" \
          --kappa "$kappa" --seed "$seed" "${STUDENT[@]}"
    done
  done
}

pids=()
for setting in $SETTINGS; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
  sweep "$setting" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed sweep fails the script

# Offline distillation from top-k logits, both tail treatments, against online KD (above)
# for the smaller student: which one gets closer? (Needs the small setting's online runs.)
if [[ -n "$TOPK_KAPPAS" && " $SETTINGS " == *" small "* ]]; then
  $KDCLI dump-logits --teacher "$OUT/teacher" --out "$OUT/teacher_top$TOPK.parquet" --topk "$TOPK" \
      --dtype float16 --quiet
  mapfile -t MODEL < <(student small)
  for kappa in $TOPK_KAPPAS; do
    for seed in $SEEDS; do
      pids=()
      for tail in uniform bucket; do  # side by side
        $KDCLI distill --logits "$OUT/teacher_top$TOPK.parquet" --out "$OUT/small/top$TOPK-$tail/k$kappa/s$seed" \
            "${MODEL[@]}" --kappa "$kappa" --seed "$seed" --tau "$TAU" --alpha 1 --topk-tail "$tail" \
            "${STUDENT[@]}" & pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
      $KDCLI train-labels --teacher "$OUT/teacher" --out "$OUT/small/labels/k$kappa/s$seed" "${MODEL[@]}" \
          --kappa "$kappa" --seed "$seed" "${STUDENT[@]}"
    done
  done
fi

# Feature alignment: linear CKA between the teacher's and each self-distillation student's
# final-norm output per token (CKA_SAMPLES test windows of BLOCK tokens), KD and labels.
if [[ -n "$CKA_SAMPLES" && " $SETTINGS " == *" self "* ]]; then
  for kappa in $KAPPAS; do
    for seed in $SEEDS; do
      pids=()
      for arm in kd labels; do  # side by side
        $KDCLI cka "$OUT/teacher" "$OUT/self/$arm/k$kappa/s$seed" --out "$OUT/cka/cka_${arm}_k${kappa}_s$seed.parquet" \
            --max-samples "$CKA_SAMPLES" --estimator linear --threads 1 --quiet & pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
    done
  done
fi

$KDCLI report "$OUT" --out "$OUT/report"

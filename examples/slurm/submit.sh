#!/usr/bin/env bash
# Submit the κ sweep (the main job, at `make demo`'s settings) to slurm: the teacher and its
# logits, then the student array (a KD student and its label twin per κ and seed), then the
# report, each job waiting for the one before it.
#
#   OUT=runs/slurm_sweep bash examples/slurm/submit.sh          # settings from the environment
#   bash examples/slurm/submit.sh                               # again: resubmits the same sweep
#
# The first submission writes the settings into OUT/sweep.env (examples/settings.sh names
# them); every job, and every later submission to the same OUT, reads them from there and
# refuses an environment that disagrees, so a re-submission trains exactly the same points.
# It skips completed runs and resumes interrupted ones. Logs go to OUT/logs/.
# Extra sbatch options for every job (a partition, an account) in SBATCH_ARGS, e.g.
#   SBATCH_ARGS="--partition=cpu --account=lab" bash examples/slurm/submit.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../settings.sh"
OUT=${OUT:-runs/slurm_sweep}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)  # the jobs may start in another directory
settings="$OUT/sweep.env"
if [[ ! -f "$settings" ]]; then
  settings_defaults
  settings_write "$settings"
fi
source "$settings"  # refuses a setting the environment gives another value
if [[ "$KAPPAS$SEEDS" == *,* ]]; then
  echo "Error: KAPPAS='$KAPPAS' SEEDS='$SEEDS' ($settings): separate values with spaces, not commas" >&2
  exit 2
fi
read -ra kappas <<< "$KAPPAS"
read -ra seeds <<< "$SEEDS"
tasks=$(( 2 * ${#kappas[@]} * ${#seeds[@]} ))
read -ra extra <<< "${SBATCH_ARGS:-}"
# --kill-on-invalid-dep: a job whose dependency failed or was cancelled is cancelled too,
# instead of waiting forever (DependencyNeverSatisfied).
sb=(sbatch --parsable --kill-on-invalid-dep=yes ${extra[@]+"${extra[@]}"})

teacher=$("${sb[@]}" --job-name=kd-teacher --cpus-per-task=1 --output="$OUT/logs/teacher-%j.out" \
    "$here/sweep.sbatch" "$settings" teacher)
array=$("${sb[@]}" --job-name=kd-students --dependency=afterok:"$teacher" --array=0-$((tasks - 1)) \
    --output="$OUT/logs/students-%A_%a.out" "$here/sweep.sbatch" "$settings" students)
report=$("${sb[@]}" --job-name=kd-report --dependency=afterok:"$array" --output="$OUT/logs/report-%j.out" \
    "$here/sweep.sbatch" "$settings" report)
echo "teacher job $teacher, student array $array ($((tasks / 2)) points × 2 methods), report job $report;" \
     "settings $settings, logs $OUT/logs"

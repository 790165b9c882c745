# The main job's settings, one definition for `make demo` (examples/_common.sh) and the slurm
# submission (examples/slurm/submit.sh): each from the environment when set there, else the
# default below. Sourced; defines functions only.

SETTINGS=(N_TRAIN N_TEST MODEL CHANNELS TEACHER_EPOCHS STUDENT_STEPS KAPPAS SEEDS TAU LR EXTRA_TRAIN
          CHECKPOINT_EVERY)

settings_defaults() {
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
  CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-500}  # steps between resumable checkpoints
}

# settings_set KEY VALUE (in a settings file): KEY=VALUE, exported; refused (status 2) when the
# environment already gives KEY another value.
settings_set() {
  if [[ -n "${!1+set}" && "${!1}" != "$2" ]]; then
    echo "Error: $1='${!1}' in the environment, but this sweep was submitted with $1='$2'" \
         "(${BASH_SOURCE[1]}): a sweep's settings are fixed when it is first submitted; unset $1," \
         "or choose another OUT for other settings" >&2
    return 2
  fi
  export "$1=$2"
}

# settings_write FILE: the current settings as a file that every job of a sweep sources (it
# sets them, refusing an environment that disagrees); written once, atomically.
settings_write() {
  local file=$1 key tmp
  tmp=$(mktemp "$file.XXXXXX")
  {
    echo "# kdcli sweep settings, written by $0 on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
    echo "# Every job of this sweep sources this file; do not edit it: start a new OUT instead."
    declare -f settings_set
    for key in "${SETTINGS[@]}"; do printf 'settings_set %s %q\n' "$key" "${!key}"; done
    printf 'KDCLI_EXAMPLES=%q\n' "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  } > "$tmp"
  mv "$tmp" "$file"
}

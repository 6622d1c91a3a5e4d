#!/usr/bin/env bash
# Issue 49's distillation end to end (docs/distillation.md): stage 1 on the shipped digits, then
# stage-2 rounds that halve DDIM's steps from 16 to 1, each round's student exported beside its
# run. A stage resumes from its checkpoint and a finished one only re-exports, so the same command
# continues after a kill, in a later session, or on a GPU machine. From the repository root:
#
#   scripts/distil.sh DIR [FLAG...]
#
# DIR holds the runs: teacher-mnist.safetensors (a copy of weights/mnist.safetensors, which the
# stage-1 checkpoint names by that relative path), stage1/ and s16.safetensors (the stage-1
# student, taught to be drawn over 16 steps by the first round), s8/ … s1/ and s8.safetensors …
# s1.safetensors (drawn over 8 … 1 steps). FLAGs go to every `ddpm distil` (e.g. --backend wgpu
# --batch-size 256). STAGE1_STEPS (default 4000), STAGE1_FLAGS (stage 1's own: e.g. "--base-channels
# 48 --lr 5e-4 --warmup 300 --lr-decay 3000" for a narrower student from scratch), W_MAX (the
# largest w every stage learns, default 4), ROUND_STEPS (800 a round) and DDPM (the binary, default
# target/release/ddpm) may be set. A round starts from weights that already work, so it warms
# up over 50 steps instead of training's 500 and its rate falls linearly to 0 over the round, which
# ends it on settled weights for the next round to copy.
set -euo pipefail
dir=$1
flags=("${@:2}")
ddpm=$(realpath "${DDPM:-target/release/ddpm}")
mkdir -p "$dir"
[[ -f $dir/teacher-mnist.safetensors ]] || cp weights/mnist.safetensors "$dir/teacher-mnist.safetensors"
cd "$dir"

# stage OUT STEPS DISTIL_FLAG...: runs (or resumes) OUT to STEPS, then exports its EMA student.
stage() {
  local out=$1 steps=$2
  local resume=()
  [[ -f $out/checkpoint.ddpm ]] && resume=(--resume)
  "$ddpm" distil --out "$out" "${resume[@]}" --steps "$steps" "${@:3}" "${flags[@]}" 2>&1 | tee -a "$out.log"
  "$ddpm" export --run "$out" --out "$out.safetensors"
}

read -ra stage1_flags <<< "${STAGE1_FLAGS:-}"
w_range=(--w-min 0 --w-max "${W_MAX:-4}")
stage stage1 "${STAGE1_STEPS:-4000}" --teacher teacher-mnist.safetensors "${w_range[@]}" "${stage1_flags[@]}"
cp stage1.safetensors s16.safetensors
round_steps=${ROUND_STEPS:-800}
for n in 16 8 4 2; do
  stage "s$((n / 2))" "$round_steps" --teacher "s$n.safetensors" --teacher-steps "$n" "${w_range[@]}" \
    --warmup 50 --lr-decay "$round_steps"
done

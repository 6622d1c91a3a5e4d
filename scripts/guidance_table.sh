#!/usr/bin/env bash
# The guidance trade-off of a class-conditional MNIST model, the field's way: for each w,
# `ddpm sample --class all` (N images of every digit with the model's default sampler) and
# `ddpm eval` on the class folders; one JSON line per w with class agreement (overall and the
# worst class), MNIST-FD and its floor, confident share, entropy and copies. w = any is `ddpm
# sample` without --class ("any" in the page: each image its seed's class, at the default w),
# measured on the unconditional bar (any@W: the same at guidance W); w = 0 is the ∅ row alone.
# Run from the repository root:
#
#   scripts/guidance_table.sh WEIGHTS OUT_DIR N ROUNDS [w ... = any 1 2 3 5]
#
# SAMPLER holds `ddpm sample`'s sampler flags (docs/mnist-model.md's table: SAMPLER="--steps 150
# --eta 1"); without it each image is drawn with the model's default, which for a distilled student
# is its own grid.
# Each w gets ROUNDS blocks of N images per class; block r uses seeds from r·10N on, so more
# rounds add new images (a block already sampled is kept: rerun with a larger ROUNDS to grow
# the set). The report of w covers its first ROUNDS blocks (OUT_DIR/w<W>.json).
set -euo pipefail
weights=$1 out=$2 n=$3 rounds=$4
ws=("${@:5}")
[[ ${#ws[@]} -eq 0 ]] && ws=(any 1 2 3 5)
ddpm=${DDPM:-target/release/ddpm}
read -ra sampler <<< "${SAMPLER:-}"
for w in "${ws[@]}"; do
  merged=$out/w$w/eval
  rm -rf "$merged"
  for ((r = 0; r < rounds; r++)); do
    block=$out/w$w/block$r seed=$((r * 10 * n))
    if [[ ! -f $block/done ]]; then
      rm -rf "$block"
      if [[ $w == any* ]]; then
        at=() && [[ $w == any@* ]] && at=(--guidance "${w#any@}")
        "$ddpm" sample --weights "$weights" "${sampler[@]}" "${at[@]}" --seed "$seed" --count $((10 * n)) --out "$block"
      else
        "$ddpm" sample --weights "$weights" "${sampler[@]}" --seed "$seed" --class all --guidance "$w" \
          --count "$n" --out "$block"
      fi
      touch "$block/done"
    fi
    # The blocks side by side in one folder (class folders for guided runs), as eval reads them.
    (cd "$block" && find . -name '*.png') | while read -r f; do
      mkdir -p "$merged/$(dirname "$f")"
      ln "$block/$f" "$merged/$(dirname "$f")/r${r}_$(basename "$f")"
    done
  done
  "$ddpm" eval --samples "$merged" > "$out/w$w.json"
  python3 - "$w" "$out/w$w.json" <<'EOF'
import json, sys
w, r = sys.argv[1], json.load(open(sys.argv[2]))
by = [a for a in r.get("class_agreement_by_class", []) if a is not None]
print(json.dumps({
    "guidance": w, "images": r["images"],
    "class_agreement": r.get("class_agreement"), "worst_class_agreement": min(by) if by else None,
    "mnist_fd": round(r["mnist_fd"], 2), "mnist_fd_floor": round(r["mnist_fd_floor_real_train"], 2),
    "confident_share": round(r["confident_share"], 4), "confident_share_real": round(r["confident_share_real_held_out"], 4),
    "class_entropy_bits": round(r["class_entropy_bits"], 3), "near_copies": r["near_copies"],
    "closer_than_closest_held_out": r["closer_than_closest_held_out"],
}))
EOF
done

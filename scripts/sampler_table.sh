#!/usr/bin/env bash
# The table that picks the default sampler (docs/samplers.md): for each cell (a sampler at an
# NFE) and each set, 1,000 images drawn by `ddpm sample` and scored by `ddpm eval`; one JSON line
# per cell and set. Run from the repository root:
#
#   scripts/sampler_table.sh OUT_DIR SEED SET CELL...
#
# SET: `digits` (the shipped digits at their default guidance, 100 of every digit: `--class all`,
# class k's image i from seed SEED + 100·k + i), `any` (1,000 digits from seeds SEED.., each its
# seed's dealt class) or `emoji` (the emoji model, 1,000 images from seeds SEED..).
# CELL: SAMPLER:NFE with SAMPLER one of `dpm++2m`, `ddim0` (DDIM, η = 0), `ddim1` (η = 1),
# `ddpm` (all T steps), optionally with a spacing (`dpm++2m/trailing`), e.g. `dpm++2m:5 ddim0:8`. A cell already drawn is kept (OUT_DIR/SET-SEED/
# SAMPLER-NFE/done); its report is OUT_DIR/SET-SEED/SAMPLER-NFE.json. WEIGHTS replaces the set's
# shipped model (a distilled student: then the cell is its own sampler and steps, e.g. WEIGHTS=s4.safetensors
# … digits ddim0/trailing:4, which its file accepts and every other cell it refuses).
set -euo pipefail
out=$1 seed=$2 set=$3
cells=("${@:4}")
ddpm=${DDPM:-target/release/ddpm}
case $set in
  digits) weights=weights/mnist.safetensors data=mnist what=(--class all --count 100) ;;
  any) weights=weights/mnist.safetensors data=mnist what=(--count 1000) ;;
  emoji) weights=weights/emoji.safetensors data=emoji what=(--count 1000) ;;
  *) echo "unknown set $set (digits, any or emoji)" >&2 && exit 2 ;;
esac
weights=${WEIGHTS:-$weights}
for cell in "${cells[@]}"; do
  sampler=${cell%%:*} nfe=${cell##*:}
  spacing=() && [[ $sampler == */* ]] && spacing=(--spacing "${sampler#*/}")
  case ${sampler%/*} in
    dpm++2m) flags=(--sampler dpm++2m --steps "$nfe") ;;
    ddim0) flags=(--sampler ddim --eta 0 --steps "$nfe") ;;
    ddim1) flags=(--sampler ddim --eta 1 --steps "$nfe") ;;
    ddpm) flags=(--sampler ddpm) ;;
    *) echo "unknown sampler $sampler (dpm++2m, ddim0, ddim1 or ddpm)" >&2 && exit 2 ;;
  esac
  dir=$out/$set-$seed/${sampler/\//-}-$nfe
  if [[ ! -f $dir/done ]]; then
    rm -rf "$dir"
    start=$(date +%s)
    "$ddpm" sample --weights "$weights" "${flags[@]}" "${spacing[@]}" "${what[@]}" --seed "$seed" --batch 100 --out "$dir/images" 2>/dev/null
    echo $(($(date +%s) - start)) > "$dir/seconds"
    touch "$dir/done"
  fi
  "$ddpm" eval --samples "$dir/images" --data "$data" > "$dir.json"
  python3 - "$set" "$seed" "$sampler" "$nfe" "$dir.json" "$dir/seconds" "$data" <<'EOF'
import json, sys
set_, seed, sampler, nfe, path, seconds, data = sys.argv[1:]
r = json.load(open(path))
by = [a for a in r.get("class_agreement_by_class", []) if a is not None]
floors = r[f"{data}_fd_floor_real_train_sets"]
print(json.dumps({
    "set": set_, "seed": int(seed), "sampler": sampler, "nfe": int(nfe), "images": r["images"],
    "sample_seconds": round(float(open(seconds).read()), 1),
    "fd": round(r[f"{data}_fd"], 2), "fd_floor": round(r[f"{data}_fd_floor_real_train"], 2),
    "fd_floor_range": [round(min(floors), 2), round(max(floors), 2)],
    "class_agreement": r.get("class_agreement"), "worst_class_agreement": min(by) if by else None,
    "confident_share": round(r["confident_share"], 4), "confident_share_real": round(r["confident_share_real_held_out"], 4),
    "near_copies": r["near_copies"], "closer_than_closest_held_out": r["closer_than_closest_held_out"],
}))
EOF
done

"""`ddpm bench` against the PyTorch yardstick, alternately, N rounds, on the yardstick's UNet
(1×32×32, base 32, widths 32/64/128, attention at the lowest level, one block, dropout 0.1):
prints one JSON line per measurement with both medians (and the GFLOP/s they are: the UNet's
operations, `UNet::flops`, over the time), the ratio ddpm/PyTorch of each round
and its spread, and a last line naming the CPU, the kernels and the date. Both sides run with
the same thread count. The yardstick is the team's `torch_bench.py` (same JSON fields as
`ddpm bench`); pass its path, it is not part of this repository.

    python scripts/vs_torch.py --yardstick PATH/torch_bench.py --rounds 3 [--python .venv/bin/python]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

KEYS = [("forward", 1), ("forward", 16), ("forward", 64), ("train_step", 64), ("sample_step", 16)]


def lines(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def by_key(rows):
    return {(r["what"], r["batch"]): r for r in rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--yardstick", required=True, help="path of the PyTorch yardstick torch_bench.py")
    p.add_argument("--python", default=sys.executable, help="the Python with torch installed")
    p.add_argument("--ddpm", default="target/release/ddpm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    # The yardstick's multipliers compound (labml): 1,2,2 there are widths 32/64/128, paper 1,2,4 here.
    ours = [a.ddpm, "bench", "--backend", "cpu", "--image-size", "32", "--reps", str(a.reps)]
    theirs = [a.python, a.yardstick, "--threads", str(a.threads), "--reps", str(a.reps)]
    rounds = []
    cpu = kernels = None
    for r in range(a.rounds):
        # Alternate which side goes first, so that a machine that slows down over the run
        # does not favour one side.
        first, second = (ours, theirs) if r % 2 == 0 else (theirs, ours)
        got = {id(first): by_key(lines(first, env)), id(second): by_key(lines(second, env))}
        ddpm, torch = got[id(ours)], got[id(theirs)]
        cpu = next(iter(ddpm.values()))["cpu"]
        kernels = next(iter(ddpm.values()))["kernels"]
        rounds.append({k: (ddpm[k]["ms"], torch[k]["ms"]) for k in KEYS if k in ddpm and k in torch})
        # The network's operations per call (ddpm's gflops × ms; the two UNets are the same,
        # tests/model.rs checks the count against PyTorch's FlopCounterMode).
        # (An older ddpm without the field: no GFLOP/s.)
        flops = {k: ddpm[k]["gflops"] * ddpm[k]["ms"] * 1e6 for k in KEYS if "gflops" in ddpm.get(k, {})}
        print(f"# round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    for key in KEYS:
        pairs = [rd[key] for rd in rounds if key in rd]
        if not pairs:
            continue
        ratios = [d / t for d, t in pairs]
        print(json.dumps({
            "what": key[0], "batch": key[1],
            "ddpm_ms": round(statistics.median(d for d, _ in pairs), 2),
            "torch_ms": round(statistics.median(t for _, t in pairs), 2),
            "ddpm_gflops": round(flops[key] / statistics.median(d for d, _ in pairs) / 1e6, 1) if key in flops else None,
            "torch_gflops": round(flops[key] / statistics.median(t for _, t in pairs) / 1e6, 1) if key in flops else None,
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "rounds": len(pairs),
        }), flush=True)
    print(json.dumps({"cpu": cpu, "kernels": kernels, "threads": a.threads,
                      "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
    main()

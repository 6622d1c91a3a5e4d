"""labml's UNet (PyPI `labml-nn`, `labml_nn.diffusion.ddpm.unet`) against ours, through files only.

    python scripts/labml_interop.py fixture DIR      # the small checkpoint `cargo test` imports
    python scripts/labml_interop.py check --ddpm BIN  # import, ε and a DDIM run, both configs

`fixture` writes a small grey-scale labml UNet's `state_dict` (every parameter randomised, so
that a transposed or skipped tensor shows), an x_t, and the ε labml computes for it, with the
softmax over the keys (labml-nn today) and over the queries (before late 2022): what
tests/import.rs checks without Python. `check` builds labml's UNet at its experiment's defaults
(167,777,987 parameters) and at the small configuration, saves each `state_dict` with
`torch.save`, imports it with `ddpm import`, and checks (f32) ε from `ddpm eps` to 1e-4 on every kernel path; a
DDIM η = 0 run from the same x_T (`ddpm sample --x-t`) against the same update computed here, to 5e-4; and
the way back, `ddpm export --labml` loaded by labml's `UNet` with `load_state_dict(strict=True)`.
Needs torch, numpy, safetensors and `pip install --no-deps labml-nn`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from labml_nn.diffusion.ddpm.unet import AttentionBlock, UNet

SMALL = dict(image_channels=1, n_channels=32, ch_mults=[1, 1], is_attn=[False, True], n_blocks=1)
SMALL_SIZE = 8
# labml's experiment (labml_nn/diffusion/ddpm/experiment.py): CelebA-HQ at 32×32, RGB.
EXPERIMENT = dict(image_channels=3, n_channels=64, ch_mults=[1, 2, 2, 4], is_attn=[False, False, False, True],
                  n_blocks=2)
EXPERIMENT_SIZE = 32
TOL = 1e-4
# A sampler's run compounds ε's error: x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t scales it by up to 1/√ᾱ_999 ≈ 156 at the first
# step, and the AMX path's bf16x3 products leave ε about 1e-5 off on labml's experiment (1.8e-4 on x₀ after 10 DDIM
# steps there; 3e-5 without AMX). Its bound: an eighth of a grey level of [0, 1] data (1/255/8 ≈ 5e-4).
DDIM_TOL = 5e-4
# Every CPU kernel path `ddpm` offers here, with the environment that picks it.
KERNEL_PATHS = [("cpu", {})] + ([("cpu, AMX off", {"DDPM_AMX": "off"})] if os.uname().machine == "x86_64" else [])


def labml_unet(args, seed):
    """labml's UNet with every parameter drawn at random (GroupNorm's too, not just 1 and 0)."""
    torch.manual_seed(seed)
    model = UNet(**args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.0 / max(1, p[0].numel()) ** 0.5))
    return model


def attention_over_queries(self, x, t=None):
    """labml-nn's AttentionBlock.forward before late 2022 (its issue #146): softmax over dim 1."""
    batch_size, n_channels, height, width = x.shape
    x = x.view(batch_size, n_channels, -1).permute(0, 2, 1)
    qkv = self.projection(x).view(batch_size, -1, self.n_heads, 3 * self.d_k)
    q, k, v = torch.chunk(qkv, 3, dim=-1)
    attn = torch.einsum('bihd,bjhd->bijh', q, k) * self.scale
    attn = attn.softmax(dim=1)
    res = torch.einsum('bijh,bjhd->bihd', attn, v)
    res = res.reshape(batch_size, -1, self.n_heads * self.d_k)
    res = self.output(res) + x
    return res.permute(0, 2, 1).view(batch_size, n_channels, height, width)


def eps(model, x_t, t, queries=False):
    keys = AttentionBlock.forward
    if queries:
        AttentionBlock.forward = attention_over_queries
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x_t), torch.full((x_t.shape[0],), t, dtype=torch.long)).numpy()
    finally:
        AttentionBlock.forward = keys


def fixture(out):
    os.makedirs(out, exist_ok=True)
    model = labml_unet(SMALL, 0)
    torch.save(model.state_dict(), os.path.join(out, "eps_model.pth"))
    x_t = np.random.default_rng(1).standard_normal((2, 1, SMALL_SIZE, SMALL_SIZE)).astype(np.float32)
    np.save(os.path.join(out, "x_t.npy"), x_t)
    np.save(os.path.join(out, "eps_t500.npy"), eps(model, x_t, 500))
    np.save(os.path.join(out, "eps_t500_queries.npy"), eps(model, x_t, 500, queries=True))
    # A checkpoint holding the state_dict under a key, beside a lying one (one tensor's shape
    # changed; the others are the same storages, saved once), and one holding integers.
    lying = model.state_dict()
    lying["down.0.res.conv2.weight"] = lying["down.0.res.conv2.weight"][:, :16].clone()
    torch.save({"state_dict": model.state_dict(), "lying": lying, "step": 7}, os.path.join(out, "checkpoint.pth"))
    torch.save({"image_proj.weight": torch.zeros(32, 1, 3, 3, dtype=torch.int64)}, os.path.join(out, "integer.pth"))
    json.dump({"labml_unet": SMALL, "image_size": SMALL_SIZE, "t": 500, "torch": torch.__version__},
              open(os.path.join(out, "README.json"), "w"), indent=1)
    print(f"wrote {out}")


def run(cmd):
    subprocess.run(cmd, check=True)


def ddim(model, x, steps, t_count, lo, hi):
    """DDIM with η = 0 (Song et al. eq. 12) on our trailing grid, x̂₀ clipped to [lo, hi] and ε
    re-derived from it, the last step onto x₀: what `ddpm sample --sampler ddim --eta 0` runs."""
    beta = torch.linspace(1e-4, 0.02, t_count, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - beta, 0)
    grid = [(i + 1) * t_count // steps - 1 for i in reversed(range(steps))]
    x = torch.from_numpy(x)
    for i, t in enumerate(grid):
        ab = alpha_bar[t].item()
        ab_prev = alpha_bar[grid[i + 1]].item() if i + 1 < len(grid) else 1.0
        with torch.no_grad():
            e = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = ((x - (1 - ab) ** 0.5 * e) / ab ** 0.5).clamp(lo, hi)
        e = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
        x = ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * e
    return x.numpy()


def check(ddpm, name, args, size, work):
    from safetensors.torch import load_file
    model = labml_unet(args, 2)
    pth = os.path.join(work, f"{name}.pth")
    torch.save(model.state_dict(), pth)
    ours = os.path.join(work, f"{name}.safetensors")
    run([ddpm, "import", pth, "--out", ours, "--image-size", str(size)])
    rng = np.random.default_rng(3)
    x_t = rng.standard_normal((2, args["image_channels"], size, size)).astype(np.float32)
    x_path = os.path.join(work, f"{name}-x.npy")
    np.save(x_path, x_t)
    worst = {}
    for t in (0, 500, 999):
        expected = eps(model, x_t, t)
        for path, env in KERNEL_PATHS:
            out = os.path.join(work, f"{name}-eps.npy")
            subprocess.run([ddpm, "eps", "--weights", ours, "--x-t", x_path, "--t", str(t), "--out", out],
                           check=True, env={**os.environ, **env})
            d = float(np.abs(np.load(out) - expected).max())
            worst[f"eps t={t} ({path})"] = d
    # DDIM η = 0 from the same x_T, 10 steps, x̂₀ clipped to labml's [0, 1].
    sample = os.path.join(work, f"{name}-sample")
    expected = ddim(model, x_t, 10, 1000, 0, 1)
    for path, env in KERNEL_PATHS:
        subprocess.run([ddpm, "sample", "--weights", ours, "--x-t", x_path, "--sampler", "ddim", "--eta", "0", "--steps",
                        "10", "--out", sample], check=True, env={**os.environ, **env})
        worst[f"ddim-10 x0 ({path})"] = float(np.abs(np.load(os.path.join(sample, "x0.npy")) - expected).max())
    # Back to PyTorch: labml's UNet loads our labml-shaped export strictly and computes the same ε.
    back = os.path.join(work, f"{name}-labml.safetensors")
    run([ddpm, "export", "--weights", ours, "--labml", back])
    from safetensors import safe_open
    with safe_open(back, "pt") as f:
        exported_args = json.loads(f.metadata()["labml_unet"])
    assert exported_args == {**args, "ch_mults": list(args["ch_mults"])}, exported_args
    again = UNet(**exported_args).eval()
    again.load_state_dict(load_file(back), strict=True)
    worst["export --labml, eps t=500"] = float(np.abs(eps(again, x_t, 500) - eps(model, x_t, 500)).max())
    params = sum(p.numel() for p in model.parameters())
    for what, d in worst.items():
        print(json.dumps({"config": name, "params": params, "check": what, "max_abs_diff": d}))
    return all(d <= (DDIM_TOL if what.startswith("ddim") else TOL) for what, d in worst.items())


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("out")
    c = sub.add_parser("check")
    c.add_argument("--ddpm", default="target/release/ddpm")
    c.add_argument("--small-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if a.command == "fixture":
        return fixture(a.out)
    with tempfile.TemporaryDirectory() as work:
        ok = check(a.ddpm, "small", SMALL, SMALL_SIZE, work)
        if not a.small_only:
            ok &= check(a.ddpm, "experiment", EXPERIMENT, EXPERIMENT_SIZE, work)
    if not ok:
        sys.exit(f"a difference is above its bound ({TOL} for ε, {DDIM_TOL} for a DDIM run's x₀)")


if __name__ == "__main__":
    main()

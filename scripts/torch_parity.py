"""Loads ddpm-web's exported weights into our PyTorch reference UNet (scripts/ref_unet.py:
labml's structure and state_dict keys, built from the file's own `unet` config) with
strict=True and compares one forward pass with burn's.

    cargo run --release --example torch_parity -- /tmp/parity
    python scripts/torch_parity.py /tmp/parity        # needs torch, safetensors
"""
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ref_unet import UNet  # noqa: E402

out = sys.argv[1]
with safe_open(f"{out}/unet.safetensors", "pt") as f:
    cfg = json.loads(f.metadata()["unet"])
model = UNet(cfg).eval()
model.load_state_dict(load_file(f"{out}/unet.safetensors"), strict=True)
io = load_file(f"{out}/io.safetensors")
with torch.inference_mode():
    y = model(io["x"], torch.tensor([0, 10, 500, 999]))
diff = (y - io["y"]).abs().max().item()
print(f"state_dict keys and shapes match labml's (strict load); max |y_torch - y_burn| = {diff:.2e}")
sys.exit(0 if diff < 1e-4 else 1)

"""Loads ddpm-web's exported weights into the PyTorch reference UNet (labml's structure and
state_dict keys, ../shared/ref/torch_bench.py) with strict=True and compares one forward pass.

    cargo run --release --example torch_parity -- /tmp/parity
    .venv/bin/python scripts/torch_parity.py /tmp/parity
"""
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, "../shared/ref")
from torch_bench import UNet  # noqa: E402

out = sys.argv[1]
# Paper multipliers 1,2,4 are labml's compounding 1,2,2.
model = UNet(image_channels=1, n_channels=32, ch_mults=(1, 2, 2), is_attn=(False, False, True), n_blocks=1).eval()
model.load_state_dict(load_file(f"{out}/unet.safetensors"), strict=True)
io = load_file(f"{out}/io.safetensors")
with torch.inference_mode():
    y = model(io["x"], torch.tensor([0, 10, 500, 999]))
diff = (y - io["y"]).abs().max().item()
print(f"state_dict keys and shapes match labml's (strict load); max |y_torch - y_burn| = {diff:.2e}")
sys.exit(0 if diff < 1e-4 else 1)

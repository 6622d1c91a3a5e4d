"""ddpm-web's UNet in PyTorch: labml's annotated DDPM structure and state_dict keys
(`labml_nn/diffusion/ddpm/unet.py`), built from the `unet` config a weights file carries, with
the two departures `src/unet/mod.rs` makes towards the paper: a level's width is base × mult
(labml compounds the multipliers), and the attention block applies its GroupNorm (labml builds
it and never uses it). Used by scripts/torch_parity.py; nothing here is tuned for speed.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t (dim / 4 features: half sines, half cosines with frequencies
    exp(-i ln 10000 / (half - 1))), then lin1 -> Swish -> lin2."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.lin1 = nn.Linear(dim // 4, dim)
        self.lin2 = nn.Linear(dim, dim)

    def forward(self, t):
        half = self.dim // 8
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10_000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return self.lin2(F.silu(self.lin1(torch.cat([angles.sin(), angles.cos()], dim=1))))


class ResidualBlock(nn.Module):
    """GroupNorm -> Swish -> conv, + the projected time embedding, GroupNorm -> Swish -> dropout
    -> conv, + the (1x1-projected when the width changes) shortcut."""

    def __init__(self, c_in, c_out, time_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.time_emb = nn.Linear(time_dim, c_out)

    def forward(self, x, t):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb(F.silu(t))[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, GroupNorm first, residual add."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.projection = nn.Linear(c, 3 * c)
        self.output = nn.Linear(c, c)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.projection(self.norm(x).reshape(b, c, h * w).transpose(1, 2)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) * c ** -0.5, dim=-1)  # over the keys
        return x + self.output(attn @ v).transpose(1, 2).reshape(b, c, h, w)


class Block(nn.Module):
    """labml's DownBlock / UpBlock: a residual block, then attention or nothing."""

    def __init__(self, c_in, c_out, time_dim, groups, attn):
        super().__init__()
        self.res = ResidualBlock(c_in, c_out, time_dim, groups)
        self.attn = AttentionBlock(c_out, groups) if attn else nn.Identity()

    def forward(self, x, t):
        return self.attn(self.res(x, t))


class Resample(nn.Module):
    """Downsample (3x3 conv, stride 2) or Upsample (4x4 transposed conv, stride 2)."""

    def __init__(self, c, up):
        super().__init__()
        self.up = up
        self.conv = nn.ConvTranspose2d(c, c, 4, 2, 1) if up else nn.Conv2d(c, c, 3, 2, 1)

    def forward(self, x, t):
        return self.conv(x)


class Middle(nn.Module):
    def __init__(self, c, time_dim, groups):
        super().__init__()
        self.res1 = ResidualBlock(c, c, time_dim, groups)
        self.attn = AttentionBlock(c, groups)
        self.res2 = ResidualBlock(c, c, time_dim, groups)

    def forward(self, x, t):
        return self.res2(self.attn(self.res1(x, t)), t)


class UNet(nn.Module):
    """eps_theta(x_t, t) for a weights file's `unet` config (its JSON fields)."""

    def __init__(self, cfg):
        super().__init__()
        base, mults, attn, blocks, groups = (cfg[k] for k in ("base_channels", "channel_mults", "attn", "blocks", "groups"))
        time_dim = 4 * base
        self.image_proj = nn.Conv2d(cfg["image_channels"], base, 3, padding=1)
        self.time_emb = TimeEmbedding(time_dim)
        down, width = [], base
        for i, m in enumerate(mults):
            for _ in range(blocks):
                down.append(Block(width, base * m, time_dim, groups, attn[i]))
                width = base * m
            if i < len(mults) - 1:
                down.append(Resample(width, up=False))
        self.down = nn.ModuleList(down)
        self.middle = Middle(width, time_dim, groups)
        # Per level: `blocks` blocks at the level's width, one more down to the next level's,
        # then an Upsample; each block takes one skip tensor of the way down.
        up = []
        for i in reversed(range(len(mults))):
            for _ in range(blocks):
                up.append(Block(2 * width, width, time_dim, groups, attn[i]))
            out = base * mults[i - 1] if i > 0 else base  # also the width of the skip it takes
            up.append(Block(width + out, out, time_dim, groups, attn[i]))
            width = out
            if i > 0:
                up.append(Resample(width, up=True))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(min(groups, 8), base)
        self.final = nn.Conv2d(base, cfg["image_channels"], 3, padding=1)

    def forward(self, x, t):
        t = self.time_emb(t)
        x = self.image_proj(x)
        skips = [x]
        for m in self.down:
            x = m(x, t)
            skips.append(x)
        x = self.middle(x, t)
        for m in self.up:
            if not isinstance(m, Resample):
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, t)
        return self.final(F.silu(self.norm(x)))

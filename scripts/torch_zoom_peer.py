#!/usr/bin/env python3
"""The PyTorch peer for the zoom job, on any device (the GPU comparison of issue 6): frame 0 is
an octave dream (3 octaves 1.4 apart x STEPS), each later frame is the previous one magnified
3% about the centre and dreamed FRAME_STEPS steps at full size, as

    deepdream zoom IMAGE -o z.mp4 --preset zoom --model inception-v3-tf2015 \\
        --layers mixed2=0.2,mixed3=3,mixed4=2,mixed5=1.5 --max-size 512 --jitter 0 \\
        --rotate 0 --frames N --device cuda

(InceptionV3 TF2015, the classic layer mix, step 0.02, no jitter or rotation). Prints the
frames per second of the later frames (frame 0 and model loading excluded); frames are copied
back to the host each one, as an encoder would need them.
Usage: torch_zoom_peer.py default_1.pt IMAGE [FRAMES] [DEVICE] [FRAME_STEPS] [STEPS]
"""
import sys, time
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LAYERS = {"mixed_2": 0.2, "mixed_3": 3.0, "mixed_4": 2.0, "mixed_5": 1.5}  # Keras mixed2..mixed5


def main():
    archive, image = sys.argv[1:3]
    frames = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    device = sys.argv[4] if len(sys.argv) > 4 else ("cuda" if torch.cuda.is_available() else "cpu")
    frame_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    steps = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    scale, step, zoom = 1.4, 0.02, 1.03
    net = torch.jit.load(archive, map_location=device).eval()
    for p in net.parameters():  # input gradients only
        p.requires_grad_(False)
    stages = list(net.net.layers.named_children())
    last = max(i for i, (n, _) in enumerate(stages) if n in LAYERS)

    def loss_fn(x):
        total = 0.0
        for name, mod in stages[: last + 1]:
            x = mod(x)
            if name in LAYERS:
                total = total + LAYERS[name] * x[:, :, 2:-2, 2:-2].pow(2).sum() / x.numel()
        return total

    lo, hi = -1.0, 127.0 / 128.0

    def ascend(x, n):
        for _ in range(n):
            x = x.detach().requires_grad_(True)
            loss_fn(x).backward()
            g = x.grad
            x = (x.detach() + step * g / g.abs().mean().clamp_min(1e-7)).clamp(lo, hi)
        return x

    resize = lambda t, s: F.interpolate(t, s, mode="bilinear", align_corners=False)
    img = Image.open(image).convert("RGB")
    img.thumbnail((512, 512))
    base = (torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float().to(device) - 128.0) / 128.0
    H, W = base.shape[2:]
    shapes = [(int(H / scale ** i), int(W / scale ** i)) for i in range(3)][::-1]
    x = resize(base, shapes[0])
    shrunk = x.clone()
    for k, s in enumerate(shapes):  # frame 0: the octave dream
        if k > 0:
            x = resize(x, s) + (resize(base, s) - resize(shrunk, s))
            shrunk = resize(base, s)
        x = ascend(x, steps)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.time()
    for _ in range(frames - 1):
        # Magnify about the centre: crop the border, scale back to the frame size.
        theta = torch.tensor([[[1 / zoom, 0, 0], [0, 1 / zoom, 0]]], device=device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = ascend(x, frame_steps)
        frame = (x[0].permute(1, 2, 0) * 128 + 128).round().clamp(0, 255).byte().cpu()
    sync()
    elapsed = time.time() - t0
    print(f"device {device} frames {frames - 1} at {W}x{H}: {elapsed:.3f} s, fps {(frames - 1) / elapsed:.2f}, per frame {elapsed / (frames - 1):.3f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The PyTorch peer on a GPU, for scripts/gpu-check.sh: the same DeepDream work as
`deepdream bench` and `deepdream zoom`, in PyTorch eager, on architectures of the same shape
with random weights (a GPU machine has no ImageNet weights; speed does not depend on them):

  lite0      timm's efficientnet_lite0 (our EfficientNet-Lite0)
  inception  torchvision's inception_v3 (our inception-v3)

`steps` times one DeepDream step (forward to the deepest layer, loss = mean square of it,
backward to the input, normalised ascent, as `deepdream bench` with no --layers does) for each
architecture, size and mode, and prints one line each:

  peer ARCH WxH MODE step MS ms peak MIB MiB

Modes: fp32 (TF32 off everywhere), default (PyTorch's defaults: TF32 in cuDNN convolutions),
bf16 (autocast to bfloat16 with channels_last).

`zoom` times zoom frames as `deepdream zoom --preset zoom --frame-steps K --jitter 0 --rotate 0`
does them on EfficientNet-Lite0 (layers block8 + block10): magnify 3% about the centre, K steps,
copy the frame to the host as bytes. Prints `peer zoom lite0 WxH MODE fps F`.

On the CPU (`steps --device cpu --threads 1,2,4`), fp32 only, once per thread count
(torch.set_num_threads), for the scaling figures of scripts/cpu-scaling.sh:

  peer ARCH WxH cpu threads N step MS ms

Usage: torch_gpu_peer.py steps [--sizes 512x512,1920x1080] [--archs lite0,inception] [--steps 10]
                               [--device cuda|cpu] [--threads 1,2,4]
       torch_gpu_peer.py zoom IMAGE [--frames 30] [--frame-steps 4] [--mode fp32]
"""
import argparse
import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F


def set_mode(mode):
    tf32 = mode != "fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False if mode == "fp32" else torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = False


def trunk(arch, device, taps=None):
    """Returns (stages, tap names): a list of (name, module) run in order."""
    if arch == "lite0":
        import timm

        m = timm.create_model("efficientnet_lite0", pretrained=False)
        stages = [("stem", torch.nn.Sequential(m.conv_stem, m.bn1))]
        i = 0
        for stage in m.blocks:
            for block in stage:
                stages.append((f"block{i}", block))
                i += 1
        stages.append(("head", torch.nn.Sequential(m.conv_head, m.bn2)))
    else:
        import torchvision

        m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        stages = [(n, c) for n, c in m.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")]
    for _, s in stages:
        s.to(device).eval()
        for p in s.parameters():
            p.requires_grad_(False)
    taps = taps or [stages[-1][0]]
    last = max(i for i, (n, _) in enumerate(stages) if n in taps)
    return stages[: last + 1], taps


def make_loss(stages, taps, mode):
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if mode == "bf16" else contextlib.nullcontext

    def loss_fn(x):
        total = 0.0
        with ctx():
            for name, mod in stages:
                x = mod(x)
                if name in taps:
                    total = total + x.float().pow(2).mean()
        return total

    return loss_fn


def ascend(x, loss_fn, n, step=0.02):
    for _ in range(n):
        x = x.detach().requires_grad_(True)
        loss_fn(x).backward()
        g = x.grad
        x = (x.detach() + step * g / g.abs().mean().clamp_min(1e-7)).clamp(-1.0, 1.0)
    return x


def cpu_steps(a):
    for arch in a.archs.split(","):
        stages, taps = trunk(arch, "cpu")
        loss_fn = make_loss(stages, taps, "fp32")
        for size in a.sizes.split(","):
            w, h = map(int, size.split("x"))
            for n in map(int, a.threads.split(",")):
                torch.set_num_threads(n)
                x = torch.rand(1, 3, h, w) * 2 - 1
                x = ascend(x, loss_fn, 2)  # warm-up
                times = []
                for _ in range(a.steps):
                    t = time.time()
                    x = ascend(x, loss_fn, 1)
                    times.append(time.time() - t)
                ms = sorted(times)[len(times) // 2] * 1e3
                print(f"peer {arch} {w}x{h} cpu threads {n} step {ms:.1f} ms", flush=True)


def steps(a):
    if a.device == "cpu":
        return cpu_steps(a)
    dev = "cuda"
    for arch in a.archs.split(","):
        for mode in ("fp32", "default", "bf16"):
            set_mode(mode)
            stages, taps = trunk(arch, dev)
            if mode == "bf16":
                for _, s in stages:
                    s.to(memory_format=torch.channels_last)
            loss_fn = make_loss(stages, taps, mode)
            for size in a.sizes.split(","):
                w, h = map(int, size.split("x"))
                x = torch.rand(1, 3, h, w, device=dev) * 2 - 1
                if mode == "bf16":
                    x = x.contiguous(memory_format=torch.channels_last)
                x = ascend(x, loss_fn, 3)  # warm-up
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t = time.time()
                x = ascend(x, loss_fn, a.steps)
                torch.cuda.synchronize()
                ms = (time.time() - t) / a.steps * 1e3
                peak = torch.cuda.max_memory_allocated() / 2**20
                print(f"peer {arch} {w}x{h} {mode} step {ms:.2f} ms peak {peak:.0f} MiB", flush=True)


def zoom(a):
    from PIL import Image

    dev = "cuda"
    set_mode(a.mode)
    stages, taps = trunk("lite0", dev, ["block8", "block10"])
    loss_fn = make_loss(stages, taps, a.mode)
    img = Image.open(a.image).convert("RGB")
    img.thumbnail((512, 512))
    x = (torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float().to(dev) - 128.0) / 128.0
    x = ascend(x, loss_fn, 10)  # frame 0 (one octave is enough for timing the later frames)
    theta = torch.tensor([[[1 / 1.03, 0, 0], [0, 1 / 1.03, 0]]], device=dev)
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(a.frames):
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = ascend(x, loss_fn, a.frame_steps)
        (x[0].permute(1, 2, 0) * 128 + 128).round().clamp(0, 255).byte().cpu()
    torch.cuda.synchronize()
    fps = a.frames / (time.time() - t)
    print(f"peer zoom lite0 {x.shape[3]}x{x.shape[2]} {a.mode} fps {fps:.2f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--sizes", default="512x512,1920x1080")
    s.add_argument("--archs", default="lite0,inception")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    s.add_argument("--threads", default="1")
    z = sub.add_parser("zoom")
    z.add_argument("image")
    z.add_argument("--frames", type=int, default=30)
    z.add_argument("--frame-steps", type=int, default=4)
    z.add_argument("--mode", default="fp32")
    a = p.parse_args()
    steps(a) if a.cmd == "steps" else zoom(a)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The PyTorch peer for the video job of scripts/bench-peer.sh: the flow recipe of
presets/video.toml, as

    deepdream video CLIP -o v.mp4 --preset video --frames N

EfficientNet-Lite0 (real weights), block5 + block8, 640 px on the longer side. Frame 0 gets the
full dream (2 octaves 1.5 apart x 4 steps, step 0.03); every later frame starts from the
previous dreamed frame carried along the optical flow, mixed in with weight 0.99 where the
flow is trusted, and gets 2 octaves x 2 steps at step 0.01. The flow is OpenCV's DIS with the
settings deepdream's own DIS uses at 640 px (patch 8, stride 4, 16 iterations, finest scale 1,
no variational refinement), both ways, with the forward-backward consistency mask of
src/source/motion.rs. Prints the seconds per frame of the frames after the first (decode,
flow, warp, dream and the copy back to 8-bit pixels; model loading and frame 0 excluded).
Usage: torch_video_peer.py WEIGHTS_DIR CLIP [FRAMES]
"""
import os, sys, time
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet

TAPS = {5: 1.0, 8: 1.0}


def main():
    wdir, clip = sys.argv[1:3]
    frames = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    m = EfficientNet.from_pretrained("efficientnet-lite0", image_size=None,
                                     weights_path=os.path.join(wdir, "efficientnet-lite0-57934424.pth")).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    last = max(TAPS)

    def loss_fn(x):
        x = m._swish(m._bn0(m._conv_stem(x)))
        total = 0.0
        for i, blk in enumerate(m._blocks):
            x = blk(x)
            if i in TAPS:
                total = total + TAPS[i] * x[:, :, 2:-2, 2:-2].pow(2).sum() / x.numel()
            if i == last:
                return total

    lo, hi = -127.0 / 128.0, 1.0
    resize = lambda t, s: F.interpolate(t, s, mode="bilinear", align_corners=False)

    def dream(base, octaves, steps, step):
        H, W = base.shape[2:]
        shapes = [(int(H / 1.5 ** i), int(W / 1.5 ** i)) for i in range(octaves)][::-1]
        x = resize(base, shapes[0])
        shrunk = x.clone()
        for k, s in enumerate(shapes):
            if k > 0:
                x = resize(x, s) + (resize(base, s) - resize(shrunk, s))
                shrunk = resize(base, s)
            for _ in range(steps):
                x = x.detach().requires_grad_(True)
                loss_fn(x).backward()
                g = x.grad
                x = (x.detach() + step * g / g.abs().mean().clamp_min(1e-7)).clamp(lo, hi)
        return (x[0].permute(1, 2, 0) * 128 + 127).round().clamp(0, 255).byte().numpy()

    to_tensor = lambda rgb: (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    dis.setFinestScale(1)
    dis.setPatchSize(8)
    dis.setPatchStride(4)
    dis.setGradientDescentIterations(16)
    dis.setVariationalRefinementIterations(0)

    cap = cv2.VideoCapture(clip)

    def read():
        ok, bgr = cap.read()
        if not ok:
            return None
        h, w = bgr.shape[:2]
        s = 640 / max(h, w)
        bgr = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    frame = read()
    prev_grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    dreamed = dream(to_tensor(frame), 2, 4, 0.03)
    h, w = frame.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    t0 = time.time()
    done = 0
    for _ in range(frames - 1):
        frame = read()
        if frame is None:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        back = dis.calc(grey, prev_grey, None)  # this frame's pixel x was at x + back(x)
        fwd = dis.calc(prev_grey, grey, None)
        px, py = gx + back[..., 0], gy + back[..., 1]
        inside = (px >= 0) & (py >= 0) & (px <= w - 1) & (py <= h - 1)
        f_at = cv2.remap(fwd, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        u, v, fu, fv = back[..., 0], back[..., 1], f_at[..., 0], f_at[..., 1]
        consistent = (fu + u) ** 2 + (fv + v) ** 2 <= 0.01 * (fu ** 2 + fv ** 2 + u ** 2 + v ** 2) + 0.5
        du = np.diff(back, axis=1, append=back[:, -1:])
        dv = np.diff(back, axis=0, append=back[-1:])
        smooth = (du ** 2).sum(-1) + (dv ** 2).sum(-1) <= 0.01 * (u ** 2 + v ** 2) + 0.002
        mask = (inside & consistent & smooth).astype(np.float32)[..., None] * 0.99
        warped = cv2.remap(dreamed, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        start = mask * warped.astype(np.float32) + (1 - mask) * frame.astype(np.float32)
        dreamed = dream((torch.from_numpy(start).permute(2, 0, 1)[None] - 127.0) / 128.0, 2, 2, 0.01)
        prev_grey = grey
        done += 1
    elapsed = time.time() - t0
    print(f"frames {done} after the first at {w}x{h}: {elapsed:.3f} s, per frame {elapsed / max(done, 1):.3f} s")


if __name__ == "__main__":
    main()

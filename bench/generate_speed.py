"""Images per second of G_ema (float32, noise_mode='const') on the CPU; prints one JSON line.

python bench/generate_speed.py --res 32 --cbase 4096 --cmax 128 --batch 8
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.nets import Generator  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--cbase", type=int, default=4096)
    p.add_argument("--cmax", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--zdim", type=int, default=512)
    p.add_argument("--wdim", type=int, default=512)
    p.add_argument("--map", type=int, default=8, help="mapping layers")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="measure for at least this long")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    G = Generator(z_dim=a.zdim, c_dim=0, w_dim=a.wdim, img_resolution=a.res, img_channels=a.channels,
                  mapping_kwargs=dict(num_layers=a.map), channel_base=a.cbase, channel_max=a.cmax)
    G = G.eval().requires_grad_(False).to(device)
    z = torch.randn([a.batch, a.zdim], device=device)

    def step():
        with torch.no_grad():
            img = G(z, None, noise_mode="const", force_fp32=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return img

    for _ in range(3):
        step()
    n = 0
    t0 = time.perf_counter()
    while True:
        step()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= a.seconds and n >= 5:
            break
    print(json.dumps({
        "bench": "generate_speed", "images_per_sec": round(n * a.batch / dt, 1),
        "ms_per_batch": round(1000 * dt / n, 2), "res": a.res, "cbase": a.cbase, "cmax": a.cmax,
        "batch": a.batch, "threads": a.threads, "device": str(device), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()

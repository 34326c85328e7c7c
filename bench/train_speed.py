"""Seconds per training step of the full StyleGAN2-ADA iteration, printed as one JSON line.

    python bench/train_speed.py --res 32 --batch 16 --cbase 4096 --cmax 128 --steps 16

A step is what the trainer runs per minibatch: Gmain and Dmain every step, Greg (path length) every 4th and Dreg
(R1) every 16th, through the bgc ADA pipeline at p=0.2, fp32, plus the G_ema update. The timed steps start at
batch index 16 after a warm-up, so their mix of phases is the training schedule's.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cbase", type=int, default=4096)
    ap.add_argument("--cmax", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--map", type=int, default=2, help="mapping layers (auto preset: 2)")
    ap.add_argument("--zdim", type=int, default=512)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--augpipe", default="bgc")
    ap.add_argument("--profile", action="store_true", help="print the torch profiler's top operators to stderr")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from engine.nets import Discriminator, Generator
    from engine.train import distributed
    from engine.train.augment import AdaController, make_pipe
    from engine.train.loop import build_phases, run_phases, update_ema
    from engine.train.loss import StyleGAN2Loss

    device = torch.device(args.device)
    torch.manual_seed(0)
    G = Generator(z_dim=args.zdim, c_dim=0, w_dim=args.zdim, img_resolution=args.res, img_channels=3,
                  mapping_kwargs=dict(num_layers=args.map), channel_base=args.cbase, channel_max=args.cmax)
    D = Discriminator(c_dim=0, img_resolution=args.res, img_channels=3, channel_base=args.cbase,
                      channel_max=args.cmax, epilogue_kwargs=dict(mbstd_group_size=4))
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    import copy

    G_ema = copy.deepcopy(G).eval()
    pipe = make_pipe(args.augpipe).train().requires_grad_(False).to(device)
    pipe.p = args.p
    ada = AdaController(pipe, batch_size=args.batch, device=device)
    cfg = SimpleNamespace(G_lr=0.0025, D_lr=0.0025, betas=[0.0, 0.99], G_reg_interval=4, D_reg_interval=16,
                          ema_kimg=args.batch * 10 / 32, ema_rampup=0.05, batch_size=args.batch)
    loss = StyleGAN2Loss(G, D, augment_pipe=pipe, r1_gamma=0.0002 * args.res ** 2 / args.batch, ada=ada,
                         device=device)
    phases = build_phases(G, D, cfg)
    env = distributed.DistEnv(device=device)
    real = torch.rand([args.batch, 3, args.res, args.res], device=device) * 2 - 1
    c = torch.zeros([len(phases), args.batch, 0], device=device)

    def step(batch_idx):
        z = torch.randn([len(phases), args.batch, args.zdim], device=device)
        run_phases(phases, loss, real, c[0], z, c, batch_idx, 1, args.batch, env)
        update_ema(G_ema, G, cfg, 1000 + batch_idx * args.batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    times = []
    prof = None
    if args.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(16 + i)
        times.append(time.perf_counter() - t0)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    print(json.dumps({
        "bench": "train_speed", "res": args.res, "batch": args.batch, "cbase": args.cbase, "cmax": args.cmax,
        "map": args.map, "augpipe": args.augpipe, "p": args.p, "steps": args.steps, "threads": args.threads,
        "device": str(device), "sec_per_step": round(sum(times) / len(times), 4),
        "min_step": round(min(times), 4), "max_step": round(max(times), 4),
        "G_params": sum(p.numel() for p in G.parameters()), "D_params": sum(p.numel() for p in D.parameters()),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()

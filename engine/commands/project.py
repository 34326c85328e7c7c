"""python -m engine project --network P --target photo.png --outdir D: find the latent of a real picture.

Writes NVIDIA's files: projected_w.npz ('w' [1, num_ws, w_dim]), target.png (the cropped, resized target),
proj.png (the result) and proj.mp4 (target beside each optimisation step).
"""


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH", help="network file (.pt snapshot/export or .pkl)")
    parser.add_argument("--target", required=True, metavar="FILE", help="the picture to project")
    parser.add_argument("--outdir", required=True, metavar="DIR", help="folder for the results (created)")
    parser.add_argument("--steps", type=int, default=1000, metavar="N", help="optimisation steps (default 1000)")
    parser.add_argument("--space", default="w", choices=["w", "w+"],
                        help="one w for all layers (default, NVIDIA's) or one per layer (closer, less editable)")
    parser.add_argument("--seed", type=int, default=303, help="random seed (default 303, NVIDIA's)")
    parser.add_argument("--loss", default="auto", choices=["auto", "lpips", "d", "inception", "pixel"],
                        help="distance: auto (LPIPS when available, else offline), lpips, d (the snapshot's "
                             "discriminator features), inception (offline Inception features) or pixel")
    parser.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K",
                        help="class of a conditional network (default: w averaged over all classes)")
    parser.add_argument("--save-video", dest="save_video", action="store_true", default=True,
                        help="write proj.mp4 of the optimisation (default)")
    parser.add_argument("--no-video", dest="save_video", action="store_false", help="skip proj.mp4")
    parser.add_argument("--fps", type=float, default=60, help="proj.mp4 frames per second (default 60)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace results that already exist")


def run(args):
    import time
    from pathlib import Path

    import numpy as np

    from engine import generate as gen, media
    from engine.checkpoint import load_network
    from engine.commands import common
    from engine import latents
    from engine import project as proj
    from engine.errors import UserError

    if not 1 <= args.steps <= proj.MAX_STEPS:
        raise UserError(f"--steps {args.steps} is out of range: use 1..{proj.MAX_STEPS}")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a folder")
    names = ["projected_w.npz", "proj.png", "target.png"] + (["proj.mp4"] if args.save_video else [])
    media.check_can_write([outdir / n for n in names], args.overwrite)
    if args.save_video:
        media.require_ffmpeg(outdir / "proj.mp4")
    device = common.resolve_device(args.device)
    nets = load_network(args.network, device=device)
    G = nets["G_ema"]
    if int(G.c_dim) > 0 and args.class_idx is not None:
        gen.class_vector(G, args.class_idx)
    target = proj.load_target(args.target, G)
    loss = proj.make_loss(args.loss, G, D=nets.get("D"), device=device)
    print(f"loss: {loss.description}")
    run_ = proj.project(G, target, steps=args.steps, space=args.space, loss=loss, seed=args.seed,
                        class_idx=args.class_idx)
    history = []
    t0 = time.time()
    every = max(1, args.steps // 10)
    for s in run_:
        history.append(s.ws[:, :1].cpu() if args.space == "w" else s.ws.cpu())
        if s.step % every == 0 or s.step == s.num_steps:
            print(f"step {s.step:>5}/{s.num_steps}: distance {s.distance:.4f}  ({time.time() - t0:.1f} s)",
                  flush=True)
    final = s.ws
    Gp = run_.G  # holds the optimised noise maps
    image = gen.synthesize(Gp, final, noise_mode="const")[0]
    media.save_image(target, outdir / "target.png")
    media.save_image(image, outdir / "proj.png")
    latents.save_w(outdir / "projected_w.npz", final, G)
    if args.save_video:
        def frames():
            for w in history:
                ws = w.to(final.device)
                if ws.shape[1] == 1:
                    ws = ws.repeat(1, G.num_ws, 1)
                yield np.concatenate([target, gen.synthesize(Gp, ws, noise_mode="const")[0]], axis=1)

        media.write_video(frames(), outdir / "proj.mp4", fps=args.fps)
    print(f"psnr {proj.psnr(image, target):.2f} dB against target.png")
    print(f"wrote {', '.join(names)} to {outdir}")
    return 0

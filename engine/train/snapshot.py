"""Snapshots of a training run and the three ways to start one: write, continue exactly, transfer weights.

The snapshot layout (docs/FORMATS.md) is written here and read back here; every rank takes part in writing one
(its RNG states are gathered), only rank 0 writes the file.
"""

from pathlib import Path

from engine.checkpoint import FORMAT, VERSION, load_network, pack_network, save_snapshot
from engine.errors import UserError
from engine import runs
from engine.train import distributed
from engine.train.process import seed_everything
from engine.train.state import TrainingState, capture_rng, copy_matching, restore_rng, to_cpu


def write_snapshot(cfg, env, state: TrainingState, log):
    """Gather every rank's RNG state, then rank 0 writes network-snapshot-NNNNNN.pt atomically -> its name."""
    progress, ada, apa, loss = state.progress, state.ada, state.apa, state.loss
    lecam = loss.lecam_weight > 0
    per_rank = {"rng": capture_rng(env.device), "pl_mean": float(loss.pl_mean),
                "ada_acc": ada.state_dict()["acc"] if ada is not None else None}
    # The limited-data additions add their entries only when they are on: a snapshot without them keeps the
    # layout it always had. Each rank's own LeCam averages (of its samples) and APA sums of the interval under way:
    if lecam:
        per_rank["lecam"] = [float(loss.lecam_real), float(loss.lecam_fake)]
    if apa is not None:
        per_rank["apa_acc"] = apa.state_dict()["acc"]
    all_ranks = distributed.all_gather_object(to_cpu(per_rank), env)
    name = runs.snapshot_name(progress.cur_nimg, cfg.run_dir if env.is_main else None)
    if env.is_main:
        optimizers = {}
        for phase in state.phases:
            optimizers.setdefault(phase.name[0], to_cpu(phase.opt.state_dict()))
        pipe = state.augment_pipe
        data = {
            "format": FORMAT, "version": VERSION,
            "G": pack_network(state.G), "D": pack_network(state.D), "G_ema": pack_network(state.G_ema),
            "augment": None if pipe is None else {
                "p": float(pipe.p), "pipe": cfg.augpipe, "kwargs": dict(pipe.init_kwargs),
                "mode": cfg.aug, "target": cfg.ada_target},
            "progress": {"cur_nimg": int(progress.cur_nimg), "kimg": progress.cur_nimg / 1000,
                         "tick": int(progress.tick), "batch_idx": int(progress.batch_idx),
                         "pl_mean": float(state.loss.pl_mean), "total_sec": float(progress.total_sec),
                         "total_kimg": float(cfg.total_kimg)},
            "optimizers": optimizers,
            "options": cfg.to_dict(),
            "dataset": dict(cfg.dataset),
            "rng": {"world_size": env.world_size, "ranks": all_ranks,
                    "batch_gen": state.batch_gen.get_state().clone()},
        }
        if lecam:  # (rank 0's averages: what a resume with another number of processes starts from)
            data["lecam"] = {"weight": float(loss.lecam_weight), "decay": float(loss.lecam_decay),
                             "real": float(loss.lecam_real), "fake": float(loss.lecam_fake)}
        if apa is not None:
            data["apa"] = {"p": float(apa.p), "target": float(apa.target), "speed_kimg": float(apa.speed_kimg)}
        save_snapshot(Path(cfg.run_dir) / name, data)
        log.line(f"snapshot {name}")
    distributed.barrier(env)
    return name


def restore_training_state(snap, cfg, env, state: TrainingState, log):
    """Put a continued run back exactly where its snapshot left it."""
    try:
        state.G.load_state_dict(snap["G"]["state"])
        state.D.load_state_dict(snap["D"]["state"])
        state.G_ema.load_state_dict(snap["G_ema"]["state"])
    except RuntimeError as e:
        raise UserError(f"snapshot {cfg.resume} does not fit the network of its own run: "
                        f"{str(e).splitlines()[0]}") from None
    for phase in state.phases:
        saved = snap["optimizers"].get(phase.name[0])
        if saved is not None and phase.name.endswith(("main", "both")):
            # The learning rates come from this run's config (a continued run may lower them), the moments from
            # the snapshot.
            lrs = [group["lr"] for group in phase.opt.param_groups]
            phase.opt.load_state_dict(saved)
            for group, lr in zip(phase.opt.param_groups, lrs):
                group["lr"] = lr
    p = snap["progress"]
    progress = state.progress
    progress.cur_nimg = int(p["cur_nimg"])
    progress.batch_idx = int(p["batch_idx"])
    progress.tick = int(p["tick"])
    progress.total_sec = float(p.get("total_sec", 0.0))
    rng = snap.get("rng") or {}
    ranks = rng.get("ranks") or []
    if rng.get("batch_gen") is not None:
        state.batch_gen.set_state(rng["batch_gen"])
    ada_acc = apa_acc = None
    # LeCam's averages: this rank's own, or rank 0's for another number of processes; none saved (a snapshot
    # without LeCam, which a continued run may turn on): they start at 0 as in a new run.
    lecam = (snap.get("lecam") or {}).get("real"), (snap.get("lecam") or {}).get("fake")
    if rng.get("world_size") == env.world_size and len(ranks) == env.world_size:
        mine = ranks[env.rank]
        restore_rng(mine["rng"], env.device)
        state.loss.pl_mean.fill_(float(mine["pl_mean"]))
        ada_acc = mine.get("ada_acc")
        apa_acc = mine.get("apa_acc")
        lecam = mine.get("lecam") or (None, None)
    else:
        seed_everything(cfg.seed * env.world_size + env.rank + 7919 * progress.batch_idx)
        state.loss.pl_mean.fill_(float(p.get("pl_mean", 0.0)))
        log.line(f"note: the snapshot was written by {rng.get('world_size')} process(es), this run has "
                 f"{env.world_size}; random streams are reseeded (training continues, not bit for bit)")
    state.loss.lecam_real.fill_(float(lecam[0] or 0.0))
    state.loss.lecam_fake.fill_(float(lecam[1] or 0.0))
    if state.apa is not None:  # p from the snapshot; 0 when it had no APA (a continued run that turns it on)
        state.apa.load_state_dict({"p": (snap.get("apa") or {}).get("p", 0.0), "acc": apa_acc})
    aug = snap.get("augment")
    if state.ada is not None:
        state.ada.load_state_dict({"p": aug["p"] if aug is not None else state.augment_pipe.p, "acc": ada_acc})
    elif state.augment_pipe is not None and aug is not None:
        state.augment_pipe.p = float(aug["p"])


def transfer_weights(path, state: TrainingState, log):
    """Start from another network's weights (NVIDIA .pkl, an export, another run's snapshot)."""
    src = load_network(path, device="cpu")
    report = []
    for name, dst, source in (("G", state.G, src["G"] or src["G_ema"]), ("D", state.D, src["D"]),
                              ("G_ema", state.G_ema, src["G_ema"])):
        if source is None:
            report.append(f"{name}: not in the file, fresh weights")
            continue
        copied, skipped = copy_matching(source.state_dict(), dst)
        report.append(f"{name}: {len(copied)} tensors copied" + (f", {len(skipped)} fresh" if skipped else ""))
    log.line(f"transfer learning from {path} ({src['source']}): " + "; ".join(report))


def truncate_history(run_dir, cur_nimg):
    """After a kill, the run may have logged ticks beyond its last snapshot: drop them so curves continue."""
    kimg = cur_nimg / 1000 + 1e-9
    runs.truncate_jsonl(Path(run_dir) / runs.STATS_FILE,
                        lambda r: float(r.get("Progress/kimg", {}).get("mean", 0)) <= kimg)
    for path in runs.metric_files(run_dir).values():
        def keep(r):
            named = runs.snapshot_kimg(r.get("snapshot_pkl") or "")
            return named is None or named <= kimg
        runs.truncate_jsonl(path, keep)

"""The StyleGAN2-ADA training loop. Read training_loop() top to bottom; the helpers it calls follow it.

One call of training_loop() is one process (one GPU, or the CPU). With several processes every rank runs the same
code on its slice of each minibatch; gradients, ADA statistics and training statistics are averaged or summed
over ranks, and only rank 0 writes files.

Per step (one minibatch of batch_size images over all ranks):
    Gmain, Dmain every step; Greg every G_reg_interval (4) steps, Dreg every D_reg_interval (16) steps,
    each with its own optimiser step; then the G_ema update, and every ada_interval (4) steps the ADA update
    (and APA's, when pseudo augmentation is on).
Per tick (kimg_per_tick thousand images): statistics, log line, status.json; every `snap` ticks a grid of fakes,
a snapshot and the metrics.

Beside this file: process.py (log, status.json, stop signals, seeds), snapshot.py (write, continue, transfer),
grids.py (reals/fakes grids, metrics), state.py (TrainingState and the plain-data forms of its parts).
"""

import copy
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from engine.checkpoint import load_snapshot
from engine.errors import UserError
from engine.ops import dispatch
from engine.timefmt import format_time
from engine import runs
from engine.train import distributed, health, tensorboard
from engine.train.augment import AdaController, ApaController, make_pipe
from engine.train.grids import GridSetup, run_metrics
from engine.train.loss import StyleGAN2Loss
from engine.train.options import TrainConfig
from engine.train.process import Logger, StatusWriter, StopRequest, configure_backends, seed_everything
from engine.train.snapshot import restore_training_state, transfer_weights, truncate_history, write_snapshot
from engine.train.state import Phase, TrainingState, fork_rng
from engine.train.stats import StatsCollector


def training_loop(cfg: TrainConfig, env: distributed.DistEnv) -> int:
    """Train until cfg.total_kimg (or a stop signal, or a failure). Returns the process exit code."""
    session_start = time.time()
    device = env.device
    log = Logger(cfg.run_dir if env.is_main else None, show_progress=cfg.progress, total_kimg=cfg.total_kimg)
    stopper = StopRequest(cfg.run_dir if env.is_main else None)
    stopper.install()
    status = StatusWriter(cfg, env, session_start)
    try:
        # ---- 1. Numerics, seeds, data ----------------------------------------------------------------------
        configure_backends(cfg, device)
        # The initial weights depend on the seed only, not on the rank or the number of processes.
        seed_everything(cfg.seed)
        dataset = open_dataset(cfg)
        label_table = make_label_table(dataset, cfg)

        # ---- 2. Networks, augmentation, loss, optimisers ---------------------------------------------------
        state, stats = build_training_state(cfg, env)
        G, G_ema, loss, progress = state.G, state.G_ema, state.loss, state.progress
        ada, pipe, apa = state.ada, state.augment_pipe, state.apa

        # ---- 3. Starting point: fresh, continued run, or transfer from another network ----------------------
        last_snapshot = start_from(cfg, env, state, log)

        # ---- 4. Data stream (resumes at the exact minibatch) ------------------------------------------------
        sampler = MinibatchSampler(len(dataset), cfg.batch_size, env.rank, env.world_size, cfg.seed,
                                   start_step=progress.batch_idx)
        data_iter = iter(make_loader(dataset, sampler, cfg, device))

        # ---- 5. Run folder, the ops check, warnings with what to do, TensorBoard (rank 0 writes) ------------
        grid = GridSetup(dataset, label_table, G.z_dim, cfg.seed)
        if env.is_main:
            prepare_run_folder(cfg, env, state, grid, len(dataset), log)
        status.update("running", progress, message="training")
        monitor = health.Monitor(cfg.run_dir, ada_kimg=cfg.ada_kimg, ada_target=cfg.ada_target,
                                 adaptive=cfg.aug == "ada") if env.is_main else None
        events = tensorboard.EventLog(cfg.run_dir if env.is_main else None, log.line)

        # ---- 6. The loop -----------------------------------------------------------------------------------
        total_nimg = int(round(cfg.total_kimg * 1000))
        if progress.cur_nimg >= total_nimg:
            log.line(f"already at kimg {progress.cur_nimg / 1000:.3f} of {cfg.total_kimg:g}; nothing to do "
                     f"(raise --kimg to train on)")
            status.update("finished", progress, message="finished", snapshot=Path(cfg.resume).name)
            return 0
        rounds = cfg.batch_size // (cfg.batch_gpu * env.world_size)
        tick_start_nimg = progress.cur_nimg
        tick_start_time = time.time()
        maintenance_sec = tick_start_time - session_start
        first_tick = progress.tick == 0
        p_min_in_tick = pipe.p if pipe else 0.0
        last_p_warning_tick = -10 ** 9
        steps_done = 0
        log.start_bar(progress.cur_nimg / 1000)

        while True:
            # -- one training step ---------------------------------------------------------------------------
            real_img, real_c = next_batch(data_iter)
            real_img = real_img.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1
            real_c = real_c.to(device, non_blocking=True)
            gen_z, gen_c = draw_latents(state.batch_gen, len(state.phases), cfg.batch_size, G.z_dim, label_table,
                                        env, device)
            run_phases(state.phases, loss, real_img, real_c, gen_z, gen_c, progress.batch_idx, rounds,
                       cfg.batch_gpu, env)
            update_ema(G_ema, G, cfg, progress.cur_nimg)
            progress.cur_nimg += cfg.batch_size
            progress.batch_idx += 1
            steps_done += 1
            log.advance(cfg.batch_size / 1000)

            # -- agree across ranks on ADA statistics, failures and stop requests -----------------------------
            done = progress.cur_nimg >= total_nimg
            out_of_steps = cfg.max_steps is not None and steps_done >= cfg.max_steps
            tick_due = (done or out_of_steps or first_tick
                        or progress.cur_nimg >= tick_start_nimg + cfg.kimg_per_tick * 1000)
            # Every ada_interval steps and at tick ends (the same steps on every rank): one small all-reduce.
            # A single process also looks at once when a stop was requested, which costs no communication.
            interval_end = progress.batch_idx % cfg.ada_interval == 0
            stopping = False
            if tick_due or interval_end or (not env.active and stopper.requested):
                flags = reduce_flags(ada, apa, loss, stopper, env)
                ada_sum, ada_count, apa_sum, apa_count, nonfinite, stop = flags
                if nonfinite > 0:
                    return fail_nonfinite(log, status, progress, last_snapshot, env)
                if ada is not None and interval_end:
                    ada.update((ada_sum, ada_count))
                    p_min_in_tick = min(p_min_in_tick, pipe.p)
                if apa is not None and interval_end:
                    apa.update((apa_sum, apa_count))
                stopping = stop > 0 or out_of_steps
                tick_due = tick_due or stopping
            if not tick_due:
                continue

            # -- end of a tick: statistics, log line, warnings -----------------------------------------------
            tick_end_time = time.time()
            progress.total_sec += tick_end_time - tick_start_time + (maintenance_sec if first_tick else 0)
            entries, sec_per_kimg, line = tick_statistics(stats, env, progress, pipe, tick_start_nimg,
                                                          tick_end_time - tick_start_time, maintenance_sec, apa)
            if env.is_main:
                runs.append_jsonl(Path(cfg.run_dir) / runs.STATS_FILE, entries)
                events.write(entries)
            log.line(line)
            for warning in monitor.tick(entries) if monitor else []:
                log.line(warning)
            if ada is not None and p_min_in_tick > 0.8 and progress.tick - last_p_warning_tick >= 20:
                log.line(f"warning: augmentation probability p has stayed above 0.8 for this tick "
                         f"(p={pipe.p:.3f}); augmentations may start to leak into generated images. More data, "
                         f"--mirror 1 or a lower --target help")
                last_p_warning_tick = progress.tick
            p_min_in_tick = pipe.p if pipe else 0.0

            # -- images, snapshot, metrics (maintenance time, outside the tick's training time) ---------------
            tick_start_maint = time.time()
            final = done or stopping
            last_snapshot = save_tick_outputs(cfg, env, state, grid, final, log) or last_snapshot
            first_tick = False
            tick_start_nimg = progress.cur_nimg
            tick_start_time = time.time()
            maintenance_sec = tick_start_time - tick_start_maint
            progress.total_sec += maintenance_sec
            if final:
                break
            status.update("running", progress, sec_per_kimg=sec_per_kimg, snapshot=last_snapshot,
                          message="training")

        # ---- 7. Done or stopped -----------------------------------------------------------------------------
        log.close_bar()
        if done:
            log.line(f"finished: kimg {progress.cur_nimg / 1000:.3f}, snapshot {last_snapshot}")
            status.update("finished", progress, snapshot=last_snapshot, message="finished")
        else:
            why = "stop requested" if stopper.requested else f"stopped after {steps_done} steps (--max-steps)"
            log.line(f"{why}: kimg {progress.cur_nimg / 1000:.3f}, snapshot {last_snapshot}; continue with "
                     f"--resume {Path(cfg.run_dir) / last_snapshot}")
            status.update("stopped", progress, snapshot=last_snapshot, message=why)
            stopper.done()
        return 0
    except BaseException as e:
        log.close_bar()
        message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if isinstance(e, KeyboardInterrupt):
            message = "interrupted"
        try:
            log.line(f"failed: {message}")
        except OSError:
            pass  # a full disk may refuse the log line too; the error itself must still reach the user
        status.fail(message)
        raise
    finally:
        stopper.uninstall()
        log.close()


# ===============================================================================================================
# Setup


def make_label_table(dataset, cfg: TrainConfig):
    """[num_images, c_dim] float32 labels from which conditioning labels are drawn ([num_images, 0] without)."""
    if dataset.label_dim and cfg.cond:
        return torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))]))
    return torch.from_numpy(np.zeros([len(dataset), 0], np.float32))


def build_training_state(cfg: TrainConfig, env):
    """Fresh networks, augmentation (and ADA), loss and optimisers at position 0 -> (TrainingState, stats)."""
    from engine.nets import Discriminator, Generator

    device = env.device
    # Latents, labels and the data order are drawn for the whole minibatch from one stream that is the same
    # on every rank; each rank takes its slice. One process or several then see the same samples.
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    G = Generator(**cfg.G_kwargs).train().requires_grad_(False).to(device)
    D = Discriminator(**cfg.D_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    # Per-rank streams for what each rank draws for its own samples (augmentation, noise, mixing, PL noise).
    seed_everything(cfg.seed * env.world_size + env.rank)

    augment_pipe = ada = apa = None
    if cfg.apa:
        apa = ApaController(target=cfg.apa_target, interval=cfg.ada_interval, speed_kimg=cfg.apa_kimg,
                            batch_size=cfg.batch_size, device=device)
    if cfg.aug != "noaug":
        augment_pipe = make_pipe(cfg.augpipe).train().requires_grad_(False).to(device)
        augment_pipe.p = float(cfg.aug_p)
        if cfg.aug == "ada":
            ada = AdaController(augment_pipe, target=cfg.ada_target, interval=cfg.ada_interval,
                                speed_kimg=cfg.ada_kimg, batch_size=cfg.batch_size, device=device)

    # Lazy regularisation rescales lr and betas by k / (k + 1) (build_phases).
    stats = StatsCollector(device)
    loss = StyleGAN2Loss(G, D, augment_pipe=augment_pipe, r1_gamma=cfg.r1_gamma,
                         style_mixing_prob=cfg.style_mixing, pl_weight=cfg.pl_weight,
                         pl_batch_shrink=cfg.pl_batch_shrink, pl_decay=cfg.pl_decay,
                         autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None, stats=stats, ada=ada,
                         device=device, lecam_weight=cfg.lecam_weight, apa=apa)
    state = TrainingState(G=G, D=D, G_ema=G_ema, phases=build_phases(G, D, cfg), augment_pipe=augment_pipe, ada=ada,
                          loss=loss, batch_gen=batch_gen, apa=apa)
    return state, stats


def start_from(cfg: TrainConfig, env, state: TrainingState, log):
    """Continue from cfg.resume, transfer its weights, or keep the fresh ones; then every rank holds rank 0's
    exact weights. -> the snapshot continued from (its name), or None."""
    progress = state.progress
    if cfg.resume_mode == "continue":
        restore_training_state(load_snapshot(cfg.resume), cfg, env, state, log)
        if env.is_main:
            truncate_history(cfg.run_dir, progress.cur_nimg)
        pipe = state.augment_pipe
        log.line(f"resumed {cfg.run_dir} from {Path(cfg.resume).name} at kimg {progress.cur_nimg / 1000:.3f}, "
                 f"tick {progress.tick}, augment p {pipe.p if pipe else 0:.3f}"
                 + (f", APA p {state.apa.p:.3f}" if state.apa is not None else ""))
        for line in cfg.continue_note.splitlines():  # what a continued run changed and which given flags it keeps
            log.line(line)
    elif cfg.resume_mode == "transfer":
        transfer_weights(cfg.resume, state, log)
    for module in (state.G, state.D, state.G_ema):
        distributed.broadcast_module(module, env)
    return Path(cfg.resume).name if cfg.resume_mode == "continue" else None


def prepare_run_folder(cfg: TrainConfig, env, state: TrainingState, grid, num_images, log):
    """Rank 0: training_options.json; for a new run its description, reals.png and fakes_init.png; then which
    kernel each op runs on, checked against the reference before the first step."""
    new_folder = cfg.resume_mode != "continue" or not runs.is_run_folder(cfg.run_dir)  # before its options exist
    runs.write_options(cfg.run_dir, cfg.to_dict())
    if new_folder:
        log.line(describe_run(cfg, state.G, state.D, num_images, env))
        with fork_rng(env.device):
            grid.save_reals(Path(cfg.run_dir) / runs.REALS)
            grid.save_fakes(state.G_ema, Path(cfg.run_dir) / runs.FAKES_INIT, env.device, cfg.batch_gpu)
    for line in dispatch.training_lines(env.device, cfg.precision):
        log.line(line)


def describe_run(cfg, G, D, num_images, env):
    g_params = sum(p.numel() for p in G.parameters())
    d_params = sum(p.numel() for p in D.parameters())
    return (f"run {Path(cfg.run_dir).name}: {num_images} images of {cfg.dataset.get('resolution')} px, "
            f"cfg {cfg.cfg}, batch {cfg.batch_size} ({env.world_size} process(es) x {cfg.batch_gpu} per step), "
            f"gamma {cfg.r1_gamma:g}, G {g_params / 1e6:.2f}M / D {d_params / 1e6:.2f}M parameters, "
            f"{cfg.precision} on {env.device}, augment {cfg.aug} {cfg.augpipe}, "
            + (f"LeCam {cfg.lecam_weight:g}, " if cfg.lecam_weight > 0 else "")
            + (f"APA (target {cfg.apa_target:g}), " if cfg.apa else "") + f"{cfg.total_kimg:g} kimg"
            + (f"\nnote: {cfg.metrics_note}" if getattr(cfg, "metrics_note", "") else ""))


# ===============================================================================================================
# Steps


def build_phases(G, D, cfg: TrainConfig):
    """[Phase] in execution order: Gmain, Greg, Dmain, Dreg (or Gboth / Dboth without lazy regularisation)."""
    phases = []
    for name, module, lr, reg_interval in (("G", G, cfg.G_lr, cfg.G_reg_interval),
                                           ("D", D, cfg.D_lr, cfg.D_reg_interval)):
        params = [p for p in module.parameters()]
        if reg_interval is None:
            opt = torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), eps=1e-8)
            phases.append(Phase(name + "both", module, opt, 1))
        else:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt = torch.optim.Adam(params, lr=lr * mb_ratio, betas=tuple(b ** mb_ratio for b in cfg.betas), eps=1e-8)
            phases.append(Phase(name + "main", module, opt, 1))
            phases.append(Phase(name + "reg", module, opt, reg_interval))
    return phases


def draw_latents(batch_gen, num_phases, batch_size, z_dim, label_table, env, device):
    """z [P, n, z_dim] and c [P, n, c_dim] for this rank's n = batch_size / world samples of each phase."""
    z = torch.randn([num_phases, batch_size, z_dim], generator=batch_gen)
    idx = torch.randint(len(label_table), [num_phases, batch_size], generator=batch_gen)
    c = label_table[idx]
    per_rank = batch_size // env.world_size
    part = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    return z[:, part].to(device), c[:, part].to(device)


def run_phases(phases, loss, real_img, real_c, gen_z, gen_c, batch_idx, rounds, batch_gpu, env):
    """One training step: each phase due at batch_idx accumulates its gradient over `rounds` chunks of
    batch_gpu samples, averages it over ranks and takes an optimiser step."""
    for i, phase in enumerate(phases):
        if batch_idx % phase.interval != 0:
            continue
        phase.opt.zero_grad(set_to_none=True)
        phase.module.requires_grad_(True)
        for r in range(rounds):
            part = slice(r * batch_gpu, (r + 1) * batch_gpu)
            # gain: the lazy interval, and 1/rounds so the accumulated gradient is the mean over the minibatch
            loss.accumulate_gradients(phase.name, real_img[part], real_c[part], gen_z[i, part], gen_c[i, part],
                                      gain=phase.interval / rounds)
        # average_gradients keeps the parameters that require grad: switch them off after the step, not before.
        flat = distributed.average_gradients(list(phase.module.parameters()), env)
        if flat is not None:
            loss.nonfinite += (~torch.isfinite(flat)).sum()
            phase.opt.step()
        phase.module.requires_grad_(False)


@torch.no_grad()
def update_ema(G_ema, G, cfg: TrainConfig, cur_nimg):
    """G_ema <- beta * G_ema + (1 - beta) * G with a half-life of ema_kimg thousand images (shorter early on
    with ema_rampup)."""
    ema_nimg = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
    ema_params = list(G_ema.parameters())
    params = list(G.parameters())
    torch._foreach_lerp_(ema_params, params, 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def fail_nonfinite(log, status, progress, last_snapshot, env):
    keep = f"the last good snapshot is {last_snapshot}" if last_snapshot else "no snapshot was written yet"
    message = (f"a loss or gradient became NaN/Inf at kimg {progress.cur_nimg / 1000:.3f} (tick {progress.tick}); "
               f"training stopped, {keep}. Lower --glr/--dlr, change --gamma or use --precision fp32")
    log.close_bar()
    log.line(f"failed: {message}")
    status.update("failed", progress, snapshot=last_snapshot, message=message)
    return 1


# ===============================================================================================================
# Data


def open_dataset(cfg: TrainConfig):
    from engine.data.dataset import ImageDataset

    ds = ImageDataset(cfg.data, use_labels=cfg.cond, max_size=cfg.subset, xflip=cfg.mirror, random_seed=cfg.seed)
    if ds.resolution != cfg.G_kwargs["img_resolution"] or ds.num_channels != cfg.G_kwargs["img_channels"]:
        raise UserError(f"dataset {cfg.data!r} ({ds.resolution}x{ds.resolution}, {ds.num_channels} channel(s)) does "
                        f"not fit the network ({cfg.G_kwargs['img_resolution']} px, "
                        f"{cfg.G_kwargs['img_channels']} channel(s))")
    return ds


class MinibatchSampler:
    """Yields this rank's dataset indices for each step, forever, from step `start_step` on.

    The global order is a fresh permutation every epoch, a pure function of (seed, epoch), so the stream resumes
    exactly from a step number; rank r gets the r-th slice of each global minibatch.
    """

    def __init__(self, size, batch_size, rank, world_size, seed, start_step=0):
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self._epoch = None
        self._perm = None

    def _order(self, epoch):
        if epoch != self._epoch:
            self._perm = np.random.RandomState((self.seed * 1000003 + epoch) % 2 ** 32).permutation(self.size)
            self._epoch = epoch
        return self._perm

    def indices(self, step):
        per_rank = self.batch_size // self.world_size
        start = step * self.batch_size + self.rank * per_rank
        out = []
        for pos in range(start, start + per_rank):
            out.append(int(self._order(pos // self.size)[pos % self.size]))
        return out

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.indices(step)
            step += 1


def next_batch(data_iter):
    """The next minibatch; a dataset error raised in a loader worker keeps its one line, not the worker's traceback
    that the DataLoader puts into the message."""
    try:
        return next(data_iter)
    except UserError as e:
        raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


def _worker_leaves_stop_signals(worker_id):
    """A loader worker ignores SIGTERM and SIGINT: a stop signal sent to the whole process group (`timeout`, a batch
    scheduler's time limit, Ctrl+C in a terminal) reaches the workers too, and a worker that dies of it would end
    the run with a DataLoader error before the trainer writes its last snapshot. The trainer stops them itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, sampler, cfg: TrainConfig, device):
    kwargs = {}
    if cfg.workers > 0:
        kwargs = dict(prefetch_factor=2, persistent_workers=True, worker_init_fn=_worker_leaves_stop_signals)
    # A private generator: creating the iterator draws a worker seed, which must not move the global RNG
    # stream (a resumed run creates its iterator at another point of that stream than the original did).
    generator = torch.Generator().manual_seed(cfg.seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                       pin_memory=device.type == "cuda", generator=generator, **kwargs)


# ===============================================================================================================
# Ticks


def reduce_flags(ada, apa, loss, stopper, env):
    """One small all-reduce -> (ADA sign sum, ADA count, APA sign sum, APA count, non-finite values, stop requests)
    over all ranks."""
    device = env.device
    ada_acc = ada.acc.clone() if ada is not None else torch.zeros([2], dtype=torch.float64, device=device)
    apa_acc = apa.acc.clone() if apa is not None else torch.zeros([2], dtype=torch.float64, device=device)
    flags = torch.cat([ada_acc, apa_acc, loss.nonfinite.to(torch.float64).reshape(1),
                       torch.tensor([1.0 if stopper.requested else 0.0], dtype=torch.float64, device=device)])
    return distributed.all_reduce_sum(flags, env).cpu().tolist()


def tick_statistics(stats, env, progress, pipe, tick_start_nimg, sec_per_tick, maintenance_sec, apa=None):
    """The tick's stats.jsonl entry (NVIDIA's names) -> (entries, sec/kimg or None, the log line)."""
    device = env.device
    entries = stats.collect(env)
    kimg_done = (progress.cur_nimg - tick_start_nimg) / 1000
    sec_per_kimg = sec_per_tick / kimg_done if kimg_done > 0 else None
    cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2 ** 30
    gpu_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0
    p_now = pipe.p if pipe else 0.0
    add_scalar(entries, "Progress/tick", progress.tick)
    add_scalar(entries, "Progress/kimg", progress.cur_nimg / 1000)
    add_scalar(entries, "Progress/augment", p_now)
    if apa is not None:
        add_scalar(entries, "Progress/apa_p", apa.p)  # pseudo augmentation's p, next to ADA's
    add_scalar(entries, "Timing/total_sec", progress.total_sec)
    add_scalar(entries, "Timing/sec_per_tick", sec_per_tick)
    add_scalar(entries, "Timing/sec_per_kimg", sec_per_kimg if sec_per_kimg is not None else 0.0)
    add_scalar(entries, "Timing/maintenance_sec", maintenance_sec)
    add_scalar(entries, "Timing/total_hours", progress.total_sec / 3600)
    add_scalar(entries, "Timing/total_days", progress.total_sec / 86400)
    # CPU seconds of this process (all its threads) since it started: on a shared machine this, not the wall clock,
    # measures what training cost. It restarts at 0 in a resumed session.
    add_scalar(entries, "Resources/process_cpu_sec", time.process_time())
    add_scalar(entries, "Resources/cpu_mem_gb", cpu_mem)
    add_scalar(entries, "Resources/peak_gpu_mem_gb", gpu_mem)
    entries["timestamp"] = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    line = (f"tick {progress.tick:<5d} kimg {progress.cur_nimg / 1000:<9.3f} "
            f"time {format_time(progress.total_sec):<12s} sec/tick {sec_per_tick:<8.1f} "
            f"sec/kimg {sec_per_kimg or 0:<8.2f} maintenance {maintenance_sec:<6.1f} "
            f"cpumem {cpu_mem:<6.2f} gpumem {gpu_mem:<6.2f} augment {p_now:.3f}"
            + (f" apa {apa.p:.3f}" if apa is not None else ""))
    return entries, sec_per_kimg, line


def add_scalar(entries, name, value):
    entries[name] = {"num": 1, "mean": float(value), "std": 0.0}


def save_tick_outputs(cfg: TrainConfig, env, state: TrainingState, grid, final, log):
    """A fakes grid every image_snap ticks, a snapshot and the metrics every snap ticks, both at the end; moves
    progress.tick on (a snapshot records the tick that comes next) -> the snapshot's name, or None."""
    progress = state.progress
    if env.is_main and (final or progress.tick % cfg.image_snap == 0):
        with fork_rng(env.device):
            grid.save_fakes(state.G_ema, Path(cfg.run_dir) / runs.fakes_name(progress.cur_nimg, cfg.run_dir),
                            env.device, cfg.batch_gpu)
    tick_number = progress.tick
    progress.tick += 1
    if not (final or tick_number % cfg.snap == 0):
        return None
    distributed.average_buffers(state.G, env)
    distributed.average_buffers(state.G_ema, env)
    name = write_snapshot(cfg, env, state, log)
    if cfg.metrics:
        with fork_rng(env.device):
            run_metrics(cfg, env, state.G_ema, name, log)
    return name

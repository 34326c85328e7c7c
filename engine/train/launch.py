"""Entry point of training: one process, --gpus N processes, or one rank of a torchrun job."""

import sys
import traceback
from pathlib import Path

from engine.errors import UserError
from engine.train import distributed
from engine.train.options import TrainOptions
from engine.train.setup import pick_device, prepare_run


def train(options: TrainOptions) -> int:
    """Validate, make the run folder, train. Returns the exit code; UserError for bad input."""
    world = distributed.env_world_size()
    if world > 1:
        return _torchrun_rank(options)
    if options.gpus > 1:
        # Everything that can fail on the user's input is checked here, once, before any worker starts.
        cfg = prepare_run(options, options.gpus)
        with claim_run(cfg):
            return distributed.launch(_worker, (cfg,), options.gpus)
    from engine.train.loop import training_loop

    device = pick_device(options)
    cfg = prepare_run(options, 1)
    with claim_run(cfg):
        env = distributed.setup(device)
        return training_loop(cfg, env)


def claim_run(cfg):
    """Lock the run folder for this process (one trainer per run) and clear the temporaries of killed ones."""
    from engine.fsutil import format_bytes
    from engine.train import runlock

    lock = runlock.acquire(cfg.run_dir)
    removed = lock.removed + runlock.sweep_outdir(Path(cfg.run_dir).parent, cfg.run_dir)
    if removed:
        size = sum(n for _, n in removed)
        print(f"removed {len(removed)} temporary file(s) ({format_bytes(size)}) left in {Path(cfg.run_dir).parent} "
              f"by trainings that were killed", flush=True)
    return lock


def _torchrun_rank(options):
    """Rank of a job started by torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK)."""
    from engine.train.loop import training_loop
    from engine.train.options import TrainConfig

    env = distributed.setup(pick_device(options))
    lock = None
    try:
        payload = None
        if env.is_main:
            try:
                cfg = prepare_run(options, env.world_size)
                lock = claim_run(cfg)  # before the broadcast, so that a refusal stops every rank cleanly
                payload = {"cfg": cfg.to_dict()}
            except UserError as e:
                payload = {"error": str(e)}
        payload = distributed.broadcast_object(payload, env)
        if "error" in payload:
            if env.is_main:
                raise UserError(payload["error"])
            return 2
        return training_loop(TrainConfig.from_dict(payload["cfg"]), env)
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(env)


def _worker(cfg):
    """One of the --gpus N processes started by distributed.launch()."""
    from engine.train.loop import training_loop

    env = distributed.setup(cfg.device)
    try:
        return training_loop(cfg, env)
    except UserError as e:
        if env.is_main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        distributed.teardown(env)

"""Entry point of training: one process, --gpus N processes, or one rank of a torchrun job."""

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from engine.errors import UserError
from engine.train import distributed
from engine.train.options import TrainOptions
from engine.train.setup import continues_in_place, pick_device, prepare_run, run_to_continue


def train(options: TrainOptions) -> int:
    """Validate, make the run folder, train. Returns the exit code; UserError for bad input."""
    world = distributed.env_world_size()
    if world > 1:
        return _torchrun_rank(options)
    if options.gpus > 1:
        # Everything that can fail on the user's input is checked here, once, before any worker starts.
        cfg, lock = prepare_and_claim(options, options.gpus)
        with lock, _launch_time_for_workers():
            return distributed.launch(_worker, (cfg,), options.gpus)
    from engine.train.loop import training_loop

    device = pick_device(options)
    cfg, lock = prepare_and_claim(options, 1)
    with lock:
        env = distributed.setup(device)
        return training_loop(cfg, env)


@contextmanager
def _launch_time_for_workers():
    """The workers' stop requests count from when this command started, not from when each worker did."""
    from engine.train.process import launched_at

    old = os.environ.get("STUDIO_LAUNCHED_AT")
    os.environ["STUDIO_LAUNCHED_AT"] = str(launched_at())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STUDIO_LAUNCHED_AT", None)
        else:
            os.environ["STUDIO_LAUNCHED_AT"] = old


_SETTLE_TRIES = 5


def prepare_and_claim(options: TrainOptions, world_size: int):
    """Resolve the config and hold its run folder -> (TrainConfig, RunLock).

    A run continued in its own folder is locked before anything of it is read: which snapshot `--resume latest` or
    a run folder means, and the snapshot itself, are read under the lock. A trainer that had to wait for another
    therefore continues from what that one left, never from a snapshot it chose before and that has since been
    followed by newer ones (whose stats and grids it would overwrite). A new run's folder is made for this trainer
    alone, so it is locked once made.
    """
    for _ in range(_SETTLE_TRIES):
        guess = run_to_continue(options)
        lock = claim_folder(guess) if guess is not None else None
        try:
            cfg = prepare_run(options, world_size)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if not continues_in_place(cfg):
            if lock is not None:
                lock.release()
            return cfg, claim_folder(cfg.run_dir)
        if lock is not None and Path(cfg.run_dir).resolve() == Path(guess).resolve():
            return cfg, lock
        # Between the look and the lock another run became the one to continue: look again.
        if lock is not None:
            lock.release()
    raise UserError(f"--resume {options.resume}: the runs in {options.outdir} kept changing while this training "
                    f"chose one to continue; try again when the other trainings have started")


def claim_folder(run_dir):
    """Lock `run_dir` for this process (one trainer per run) and clear the temporaries of killed trainers there and
    beside it."""
    from engine.fsutil import format_bytes
    from engine.train import runlock

    lock = runlock.acquire(run_dir)
    removed = lock.removed + runlock.sweep_outdir(Path(run_dir).parent, run_dir)
    if removed:
        size = sum(n for _, n in removed)
        print(f"removed {len(removed)} temporary file(s) ({format_bytes(size)}) left in {Path(run_dir).parent} "
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
                # before the broadcast, so that a refusal stops every rank cleanly
                cfg, lock = prepare_and_claim(options, env.world_size)
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

"""Entry point of training: one process, --gpus N processes, or one rank of a torchrun job."""

import sys
import traceback

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
        return distributed.launch(_worker, (cfg,), options.gpus)
    from engine.train.loop import training_loop

    device = pick_device(options)
    cfg = prepare_run(options, 1)
    env = distributed.setup(device)
    return training_loop(cfg, env)


def _torchrun_rank(options):
    """Rank of a job started by torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK)."""
    from engine.train.loop import training_loop
    from engine.train.options import TrainConfig

    env = distributed.setup(pick_device(options))
    try:
        payload = None
        if env.is_main:
            try:
                payload = {"cfg": prepare_run(options, env.world_size).to_dict()}
            except UserError as e:
                payload = {"error": str(e)}
        payload = distributed.broadcast_object(payload, env)
        if "error" in payload:
            if env.is_main:
                raise UserError(payload["error"])
            return 2
        return training_loop(TrainConfig.from_dict(payload["cfg"]), env)
    finally:
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

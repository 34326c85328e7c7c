"""One process per GPU: process-group setup, launching, and the few collective operations the loop uses.

Three ways to run:
- one process (world size 1): no process group at all; every collective here is then a no-op;
- `--gpus N` on one machine: launch() starts N processes (torch.multiprocessing, 'spawn') with the same
  environment variables torchrun sets, so both paths share the code below;
- `torchrun --nproc_per_node N [--nnodes ...] -m engine train ...`: RANK, WORLD_SIZE and LOCAL_RANK come from
  torchrun and its rendezvous.
NCCL carries the collectives between GPUs, gloo between CPU processes.
"""

import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine import compat


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1


def env_world_size():
    """WORLD_SIZE from the environment (set by torchrun or launch()), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device_type):
    """Join the process group described by the environment (if any) and pick this rank's device."""
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device_type == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = None
    if world > 1:
        backend, note = compat.distributed_backend(device_type)
        if note and rank == 0:
            print(note, flush=True)
        if not dist.is_initialized():
            _import_before_process_group()
            kwargs = {"device_id": device} if device_type == "cuda" else {}
            try:
                dist.init_process_group(backend=backend, init_method="env://", **kwargs)
            except TypeError:  # torch without device_id
                dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def _import_before_process_group():
    """Import now the torch modules that would otherwise first load after init_process_group.

    torch.distributed.nn.functional declares `group=group.WORLD` as a default argument, evaluated when the module
    is imported; torch._dynamo imports it, and the first optimizer that is built imports torch._dynamo. Loaded
    after init_process_group, ten functions would hold the default process group for good: destroy_process_group
    could then not free it, the gloo threads would still run while the interpreter shuts down, and the process
    could die with "terminate called without an active exception" (SIGABRT) after a run that went well.
    Loaded before, those defaults are None.
    """
    import torch._dynamo  # noqa: F401
    import torch.distributed.nn.functional  # noqa: F401


def teardown(env):
    if env.active and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def all_reduce_sum(tensor, env):
    """In-place sum over ranks (no-op for one process); returns the tensor."""
    if env.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj, env):
    if not env.active:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env, src=0):
    if not env.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(env):
    if env.active:
        dist.barrier()


def average_gradients(params, env):
    """Average the .grad of params over ranks with one flat all-reduce; returns the flat gradient [P].

    Parameters without a gradient on this step contribute zeros so that every rank sends the same layout.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    if env.active:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= env.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    return flat


def broadcast_module(module, env, src=0):
    """Copy rank src's parameters and buffers to every rank."""
    if not env.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def average_buffers(module, env):
    """Average floating-point buffers (e.g. the mapping network's w_avg) over ranks so that they agree."""
    if not env.active:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b /= env.world_size


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    code = fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))  # skip interpreter teardown: process-group threads may still hold locks


def launch(fn, args, nprocs):
    """Run fn(*args) in nprocs processes (ranks 0..nprocs-1 of one machine); returns the worst exit code.

    SIGTERM to this process is passed on to every worker (each then finishes its step and stops gracefully);
    SIGINT from a terminal already reaches the workers through the process group.
    """
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(rank, nprocs, port, fn, args), daemon=False) for rank in range(nprocs)]
    for p in procs:
        p.start()

    def forward(signum, frame):
        for p in procs:
            if p.is_alive():
                try:
                    compat.ask_to_stop(p.pid)
                except OSError:
                    pass

    old_term = signal.signal(signal.SIGTERM, forward)
    old_int = signal.signal(signal.SIGINT, lambda s, f: None)
    try:
        codes = []
        for p in procs:
            p.join()
            codes.append(p.exitcode if p.exitcode is not None else 1)
            if p.exitcode not in (0, None):
                # One rank failing leaves the others waiting in a collective that never completes.
                for q in procs:
                    if q.is_alive():
                        q.kill()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return 2 if 2 in bad else (bad[0] if bad[0] > 0 else 1)

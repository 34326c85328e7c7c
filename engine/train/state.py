"""The training state that a snapshot saves and a resume restores, and the plain-data forms of its parts.

TrainingState gathers the objects the loop trains with; capture_rng / restore_rng / to_cpu turn RNG states and
optimiser moments into plain data (tensors, numbers, strings, lists, dicts) so that torch.load(weights_only=True)
opens the snapshot.
"""

import random
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Progress:
    cur_nimg: int = 0
    batch_idx: int = 0
    tick: int = 0
    total_sec: float = 0.0  # over all sessions of this run


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


@dataclass
class TrainingState:
    """Everything a snapshot saves besides the options: networks, optimiser phases, augmentation and its ADA
    controller (None when off), the loss (for pl_mean and LeCam's averages), the shared latent/data generator, the
    position, and the pseudo augmentation's controller (None when off)."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    phases: list
    augment_pipe: object
    ada: object
    loss: object
    batch_gen: torch.Generator
    progress: Progress = field(default_factory=Progress)
    apa: object = None


def capture_rng(device):
    """This process's RNG states: torch (CPU and the CUDA device), numpy's global state, python's."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state().clone(),
        "cuda": torch.cuda.get_rng_state(device).clone() if torch.device(device).type == "cuda" else None,
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": [int(v) for v in py_state[1]],
                   "gauss": None if py_state[2] is None else float(py_state[2])},
    }
    return state


def restore_rng(state, device):
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if state.get("cuda") is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class fork_rng:
    """Run maintenance work (grids, metrics) without moving any RNG stream of the training."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self.saved = capture_rng(self.device)

    def __exit__(self, *exc):
        restore_rng(self.saved, self.device)
        return False


def to_cpu(value):
    """Deep copy of nested dicts/lists with every tensor moved to the CPU."""
    if torch.is_tensor(value):
        return value.detach().to("cpu").clone()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cpu(v) for v in value]
    return value


def copy_matching(src_state, dst_module):
    """Copy tensors of src_state into dst_module's parameters/buffers where name and shape agree.

    Returns (copied names, skipped names of dst). Used for transfer learning from another network.
    """
    copied, skipped = [], []
    dst = dict(dst_module.named_parameters())
    dst.update(dict(dst_module.named_buffers()))
    with torch.no_grad():
        for name, tensor in dst.items():
            src = src_state.get(name)
            if src is not None and tuple(src.shape) == tuple(tensor.shape):
                tensor.copy_(src.to(tensor.device, tensor.dtype))
                copied.append(name)
            else:
                skipped.append(name)
    return copied, skipped

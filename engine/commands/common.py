"""What the commands share: seed and grid lists as people type them, the one device resolver, and a network with
the dataset it was trained on."""

import os
import re
import sys

from engine.errors import UserError

MAX_SEED = 2 ** 32 - 1


MAX_SEEDS = 100_000


def parse_seeds(text, what="seeds", max_count=MAX_SEEDS, max_value=MAX_SEED):
    """'0,3,5-8' -> [0, 3, 5, 6, 7, 8] (order kept, ranges inclusive). UserError on anything else."""
    if isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        s = str(text).strip()
        if not s:
            raise UserError(f"no {what} given: use a list like 0,3,5-8")
        values = []
        for part in s.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part)
            if m:
                lo, hi = int(m[1]), int(m[2])
                if hi < lo:
                    raise UserError(f"{what} range {part!r} runs backwards: write it as {hi}-{lo}")
                if len(values) + (hi - lo + 1) > max_count:
                    raise UserError(f"{what} {s!r} make more than {max_count} values; at most {max_count} at once")
                values.extend(range(lo, hi + 1))
            elif re.fullmatch(r"\d+", part):
                values.append(int(part))
            else:
                raise UserError(f"cannot read {what} {s!r}: {part!r} is not a number or a range like 5-8")
    if not values:
        raise UserError(f"no {what} given: use a list like 0,3,5-8")
    if len(values) > max_count:
        raise UserError(f"too many {what} ({len(values)}); at most {max_count} at once")
    for v in values:
        if v < 0 or v > max_value:
            raise UserError(f"{what[:-1] if what.endswith('s') else what} {v} is out of range 0..{max_value}")
    return values


def parse_grid(text):
    """'4x2' -> (cols, rows). UserError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise UserError(f"cannot read grid {text!r}: write it as COLSxROWS, e.g. 4x2")
    cols, rows = int(m[1]), int(m[2])
    if cols * rows > 10_000:
        raise UserError(f"grid {text!r} has more than 10000 cells")
    return cols, rows


def resolve_device(name="auto", flag="--device"):
    """'auto' -> cuda if available else cpu; otherwise the named device (cpu, cuda, cuda:N), checked -> torch.device.

    The one resolver of the commands, the dashboard and the trainer, with one set of messages."""
    import torch

    text = str(name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"{flag} {text!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{flag} {text!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {text!r} asked for, but torch sees no CUDA GPU here: use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def network_and_dataset(network, data, device, data_hint="a prepared dataset zip or folder"):
    """Load the network file `network` on `device` -> (the loaded network dict, its dataset's path): `data`, or else
    the dataset the network records. UserError, naming the file, when either is missing."""
    if not os.path.isfile(network):
        raise UserError(f"network '{network}' does not exist: give a snapshot (.pt) or NVIDIA .pkl")
    from engine import load_network

    net = load_network(network, device=device)
    data = data or (net.get("dataset") or {}).get("path")
    if not data:
        raise UserError(f"{network} does not record its dataset: give --data")
    if not os.path.exists(data):
        raise UserError(f"dataset '{data}' does not exist: give --data with {data_hint}")
    return net, data


def terminal_progress(unit="images"):
    """A progress(done, total) callback that keeps one counting line on a terminal's stderr (silent otherwise)."""

    def progress(done, total):
        if sys.stderr.isatty():
            print(f"\r{done}/{total} {unit}", end="", file=sys.stderr, flush=True)

    return progress

"""New generators from existing ones: a resolution blend of two networks, and the average of snapshots.

Blend ("layer swapping", the toonify trick): the synthesis blocks up to and including the split resolution come
from network A (pose, face shape, layout), the blocks above it from network B (texture, colour, fine detail).
It works when B was fine-tuned from A (or both from one parent), so that their layers still speak the same w.
The mapping network (and w_avg with it) comes from A unless asked otherwise.

Average: the mean of every floating tensor of several snapshots of one run (or of fine-tuned siblings), which
often smooths out the flicker between neighbouring snapshots.

Both write G_ema alone in our .pt format (like the demo network), loadable everywhere a network is.
"""

import re
from pathlib import Path

import torch

from engine.errors import UserError

# Constructor arguments that only choose how the computation runs, not what it computes.
_EXECUTION_ONLY = {"num_fp16_res", "fp16_channels_last", "fused_modconv_default", "class_name"}
_BLOCK_RE = re.compile(r"^synthesis\.b(\d+)\.")


def _describe_kwargs_difference(ka, kb):
    keys = sorted((set(ka) | set(kb)) - _EXECUTION_ONLY)
    diffs = [f"{k} {ka.get(k)!r} vs {kb.get(k)!r}" for k in keys if ka.get(k) != kb.get(k)]
    return diffs


def check_same_architecture(Ga, Gb, name_a="A", name_b="B"):
    """UserError naming the first difference when Ga and Gb do not have the same tensors and settings."""
    def fail(detail):
        raise UserError(f"{name_a} and {name_b} are not the same architecture ({detail}); blending and averaging "
                        "need networks of one shape, e.g. a network and a fine-tuned copy of it")

    for attr in ("img_resolution", "img_channels", "z_dim", "w_dim", "c_dim", "num_ws"):
        va, vb = int(getattr(Ga, attr)), int(getattr(Gb, attr))
        if va != vb:
            fail(f"{attr} {va} vs {vb}")
    sa, sb = Ga.state_dict(), Gb.state_dict()
    only_a = [k for k in sa if k not in sb]
    only_b = [k for k in sb if k not in sa]
    if only_a or only_b:
        name = only_a[0] if only_a else only_b[0]
        fail(f"{name} is only in {name_a if only_a else name_b}")
    for k in sa:
        if tuple(sa[k].shape) != tuple(sb[k].shape):
            fail(f"{k} has shape {list(sa[k].shape)} vs {list(sb[k].shape)}")
    diffs = _describe_kwargs_difference(Ga.init_kwargs, Gb.init_kwargs)
    if diffs:
        fail(", ".join(diffs[:3]))


def block_resolutions(G):
    return list(G.synthesis.block_resolutions)


def check_split(G, split):
    """The split resolution as an int; UserError unless it leaves at least one block on each side."""
    choices = block_resolutions(G)[:-1]
    try:
        split = int(split)
    except (TypeError, ValueError):
        raise UserError(f"--split {split!r} is not a number: use one of {', '.join(map(str, choices))}") from None
    if split not in choices:
        raise UserError(f"--split {split} is not a blend point of these {G.img_resolution}x{G.img_resolution} "
                        f"networks: use one of {', '.join(map(str, choices))} (resolutions up to the split come "
                        "from A, the ones above it from B)")
    return split


def _new_like(G):
    from engine.nets import Generator

    return Generator(**G.init_kwargs).eval().requires_grad_(False)


@torch.no_grad()
def blend_generators(Ga, Gb, split, mapping="a"):
    """G with synthesis blocks <= split (and the mapping, unless mapping='b') from Ga, the rest from Gb.

    Ga, Gb: generators of one architecture (check_same_architecture). Returns a new CPU Generator.
    """
    check_same_architecture(Ga, Gb)
    split = check_split(Ga, split)
    if mapping not in ("a", "b"):
        raise UserError(f"--mapping {mapping!r}: use a or b")
    sa, sb = Ga.state_dict(), Gb.state_dict()
    state = {}
    for name, value in sa.items():
        m = _BLOCK_RE.match(name)
        if m:
            source = sa if int(m.group(1)) <= split else sb
        elif name.startswith("mapping."):
            source = sa if mapping == "a" else sb
        else:
            source = sa
        state[name] = source[name].detach().to("cpu").clone()
    G = _new_like(Ga)
    G.load_state_dict(state, strict=True)
    return G


@torch.no_grad()
def average_generators(generators, names=None):
    """G whose floating tensors are the mean of those of `generators` (one architecture); others from the first."""
    if len(generators) < 2:
        raise UserError("averaging needs at least two networks")
    names = names or [f"network {i + 1}" for i in range(len(generators))]
    for G, name in zip(generators[1:], names[1:]):
        check_same_architecture(generators[0], G, names[0], name)
    states = [G.state_dict() for G in generators]
    state = {}
    for name, value in states[0].items():
        if value.is_floating_point():
            total = sum(s[name].detach().to("cpu", torch.float64) for s in states)
            state[name] = (total / len(states)).to(value.dtype)
        else:
            state[name] = value.detach().to("cpu").clone()
    G = _new_like(generators[0])
    G.load_state_dict(state, strict=True)
    return G


# --------------------------------------------------------------------------------------------------------------
# Files


def _check_output(out, inputs, overwrite):
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder: choose a file name for the output")
    for p in inputs:
        if Path(p).exists() and out.exists() and out.resolve() == Path(p).resolve():
            raise UserError(f"{out} is one of the input networks: choose another output file")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another output or add --overwrite")
    return out


def _save(G, out, dataset, derived):
    from engine.checkpoint import FORMAT, VERSION, pack_network, save_snapshot

    data = {"format": FORMAT, "version": VERSION, "G_ema": pack_network(G), "derived": derived}
    if dataset:
        data["dataset"] = dict(dataset)
    save_snapshot(out, data)


def blend_files(a, b, split, out, mapping="a", overwrite=False, log=print):
    """Blend the networks in files a and b (see the module docstring) and write G_ema to `out` (.pt).

    Returns {'path': out, 'from_a': [block resolutions from a], 'from_b': [those from b]}.
    """
    from engine.checkpoint import load_network

    out = _check_output(out, [a, b], overwrite)
    la, lb = load_network(a), load_network(b)
    Ga, Gb = la["G_ema"], lb["G_ema"]
    check_same_architecture(Ga, Gb, str(a), str(b))
    split = check_split(Ga, split)
    G = blend_generators(Ga, Gb, split, mapping=mapping)
    res = block_resolutions(G)
    low = [r for r in res if r <= split]
    high = [r for r in res if r > split]
    _save(G, out, la.get("dataset"), {"blend": {"a": str(a), "b": str(b), "split": split, "mapping": mapping}})
    log(f"wrote {out}: {span_text(low)} from {a}, {span_text(high)} from {b}, mapping from {a if mapping == 'a' else b}")
    return {"path": out, "from_a": low, "from_b": high}


def span_text(resolutions):
    if len(resolutions) == 1:
        return f"block {resolutions[0]}"
    return f"blocks {resolutions[0]}-{resolutions[-1]}"


def average_files(paths, out, overwrite=False, log=print):
    """Average the G_ema of the network files `paths` and write it to `out` (.pt)."""
    from engine.checkpoint import load_network

    paths = [str(p) for p in paths]
    if len(paths) < 2:
        raise UserError("--average needs at least two network files")
    out = _check_output(out, paths, overwrite)
    loaded = [load_network(p) for p in paths]
    G = average_generators([x["G_ema"] for x in loaded], paths)
    _save(G, out, loaded[0].get("dataset"), {"average": paths})
    log(f"wrote {out}: the average of {len(paths)} networks")
    return out

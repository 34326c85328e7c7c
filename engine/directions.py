"""Meaningful directions in w, found without labels, and edits along them.

* sefa: closed-form factorisation (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs"). Every
  style affine maps w to styles, s = A w + b; a direction n moves the styles most when ||A n|| is largest, so the
  directions are the eigenvectors of A^T A, A being the affine weights of the chosen layers stacked. Needs only
  the weights: milliseconds, any network (NVIDIA's too).
* pca: principal components of sampled w (Harkonen et al., "GANSpace").

Directions are unit vectors [K, w_dim]. Each also gets `scales` [K]: the standard deviation of sampled w along it,
so an edit's strength is in standard deviations of w for both methods (strength 3 is a large, still natural edit).

dirs.npz keys: 'directions' [K, w_dim] float32, 'values' [K] (eigenvalues or component variances), 'scales' [K],
'method' (str), 'layers' (int ws indices the directions were computed from), 'network' (JSON identity).
"""

import json
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.commands.common import parse_seeds

METHODS = ("sefa", "pca")
SCALE_SAMPLES = 2000
PCA_SAMPLES = 10_000


def parse_layers(text, num_ws):
    """'0-5', '2,4,6-7' or 'all'/None -> sorted ws indices within 0..num_ws-1. UserError otherwise."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return list(range(num_ws))
    # The same list-and-range syntax as seeds, bounded by the network's layers; the message names what was given.
    try:
        return sorted(set(parse_seeds(text, what="layers", max_count=num_ws * 64, max_value=num_ws - 1)))
    except UserError as e:
        raise UserError(f"layers {text}: {e} (this network has layers 0-{num_ws - 1}; or write all)") from None


def style_affines(G):
    """[(ws index, affine layer)] of every modulated layer, following the synthesis network's use of ws."""
    out = []
    idx = 0
    syn = G.synthesis
    for res in syn.block_resolutions:
        block = getattr(syn, f"b{res}")
        convs = [getattr(block, n) for n in ("conv0", "conv1") if hasattr(block, n)]
        for k, conv in enumerate(convs):
            out.append((idx + k, conv.affine))
        if hasattr(block, "torgb"):
            # A block's ToRGB reads the w that follows its convolutions (shared with the next block's first conv).
            out.append((idx + block.num_conv, block.torgb.affine))
        idx += block.num_conv
    return out


def sefa(G, layers=None):
    """Closed-form directions -> (directions [w_dim, w_dim] rows by falling eigenvalue, eigenvalues [w_dim])."""
    layers = parse_layers(layers, int(G.num_ws))
    chosen = set(layers)
    weights = [aff.weight.detach().to("cpu", torch.float64) * aff.weight_gain
               for idx, aff in style_affines(G) if idx in chosen]
    A = torch.cat(weights, dim=0)  # [sum of style channels, w_dim]
    values, vectors = torch.linalg.eigh(A.T @ A)  # ascending
    order = torch.argsort(values, descending=True)
    return vectors[:, order].T.contiguous().to(torch.float32), values[order].to(torch.float32)


@torch.no_grad()
def sample_w(G, n, seed=0, psi=1.0, class_idx=None):
    """n mapped w [n, w_dim] (a fixed RNG, so the same call gives the same directions)."""
    from engine.generate import class_vector

    device = next(iter(G.parameters())).device
    rng = np.random.RandomState(seed)
    z = torch.from_numpy(rng.randn(n, G.z_dim)).to(device, torch.float32)
    if int(G.c_dim) > 0 and class_idx is None:
        c = torch.zeros([n, G.c_dim], device=device)
        c[torch.arange(n), torch.from_numpy(rng.randint(0, G.c_dim, n)).to(device)] = 1
    else:
        c = class_vector(G, class_idx, n, device)
    ws = [G.mapping(z[i:i + 2000], c[i:i + 2000], truncation_psi=psi)[:, 0] for i in range(0, n, 2000)]
    return torch.cat(ws).to("cpu", torch.float64)


def pca(G, samples=PCA_SAMPLES, seed=0, class_idx=None):
    """Principal components of sampled w -> (directions [w_dim, w_dim] by falling variance, variances [w_dim])."""
    w = sample_w(G, int(samples), seed=seed, class_idx=class_idx)
    w = w - w.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    return vh.to(torch.float32), (s.square() / max(w.shape[0] - 1, 1)).to(torch.float32)


def compute(G, method="sefa", num=10, layers=None, seed=0, class_idx=None, samples=None):
    """The top `num` directions -> dict(directions [K, w_dim], values [K], scales [K], method, layers)."""
    method = str(method).strip().lower()
    if method not in METHODS:
        raise UserError(f"direction method {method!r} is not one of {', '.join(METHODS)}")
    num = int(num)
    if not 1 <= num <= int(G.w_dim):
        raise UserError(f"--num {num} is out of range: this network's w has {G.w_dim} dimensions, use 1..{G.w_dim}")
    layer_list = parse_layers(layers, int(G.num_ws))
    if method == "sefa":
        vectors, values = sefa(G, layer_list)
    else:
        vectors, values = pca(G, samples or PCA_SAMPLES, seed=seed, class_idx=class_idx)
    vectors, values = vectors[:num], values[:num]
    w = sample_w(G, SCALE_SAMPLES, seed=seed + 1, class_idx=class_idx)
    scales = ((w - w.mean(0, keepdim=True)).to(torch.float32) @ vectors.T).std(0)
    return {"directions": vectors, "values": values, "scales": scales.clamp_min(1e-8), "method": method,
            "layers": layer_list}


def save(path, result, G, overwrite=False):
    from engine.media import atomic_write, check_can_write
    from engine.latents import network_identity

    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise UserError(f"--out {path}: the name must end in .npz")
    check_can_write([path], overwrite)
    arrays = {
        "directions": result["directions"].numpy().astype(np.float32),
        "values": result["values"].numpy().astype(np.float32),
        "scales": result["scales"].numpy().astype(np.float32),
        "method": np.array(result["method"]),
        "layers": np.array(result["layers"], dtype=np.int64),
        "network": np.array(json.dumps(network_identity(G))),
    }

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load(path, G):
    """dirs.npz -> dict(directions [K, w_dim] tensor, values, scales, method, layers), checked against G."""
    from engine.latents import check_identity, identity_of, read_npz

    data = read_npz(path, "directions file")
    if "directions" not in data:
        raise UserError(f"{path} has no 'directions' array: use a file written by python -m engine directions")
    again = "write it again with python -m engine directions"
    dirs = _numbers(data["directions"], path, "directions", "f")
    if dirs.ndim != 2 or dirs.shape[1] != int(G.w_dim):
        raise UserError(f"{path} holds directions of shape {list(dirs.shape)}, but this network's w has "
                        f"{G.w_dim} dimensions: it was made for another network")
    check_identity(identity_of(data), G, str(path))
    k = dirs.shape[0]
    if k == 0:
        raise UserError(f"{path} holds no directions: {again}")
    scales = _numbers(data.get("scales", np.ones(k)), path, "scales", "f")
    values = _numbers(data.get("values", np.zeros(k)), path, "values", "f")
    if scales.shape != (k,) or values.shape != (k,):
        raise UserError(f"{path} holds {k} directions but scales of shape {list(scales.shape)} and values of "
                        f"shape {list(values.shape)}: {again}")
    layers = _numbers(data.get("layers", np.arange(int(G.num_ws))), path, "layers", "i")
    if layers.ndim != 1 or layers.size == 0 or layers.min() < 0 or layers.max() >= int(G.num_ws):
        raise UserError(f"{path} names layers outside 0..{int(G.num_ws) - 1}, those of this network: {again}")
    method = data.get("method", np.array("unknown"))
    return {"directions": torch.from_numpy(dirs), "values": torch.from_numpy(values),
            "scales": torch.from_numpy(scales), "method": str(method.item() if method.size == 1 else method)[:64],
            "layers": [int(v) for v in layers]}


def _numbers(array, path, key, kind):
    """An array of the file as float32 (kind 'f') or int64 (kind 'i'); UserError for text, records and the like."""
    array = np.asarray(array)
    allowed = "fiub" if kind == "f" else "iu"
    if array.dtype.kind not in allowed:
        raise UserError(f"{path}: its '{key}' array holds {array.dtype} values, not "
                        f"{'numbers' if kind == 'f' else 'whole numbers'}")
    return array.astype(np.float32 if kind == "f" else np.int64)


def edit(ws, direction, strength, layers=None, scale=1.0):
    """ws [N, num_ws, w_dim] moved by strength * scale * direction [w_dim] on the chosen ws indices only."""
    ws = ws.clone()
    layers = parse_layers(layers, ws.shape[1])
    step = (float(strength) * float(scale)) * direction.to(ws.device, ws.dtype)
    ws[:, layers] += step
    return ws


def parse_range(text):
    """'-5,5' -> (-5.0, 5.0). UserError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"cannot read range {text!r}: write it as FROM,TO, e.g. -5,5") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise UserError(f"range {text!r} must be two different finite numbers")
    return lo, hi

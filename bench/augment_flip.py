"""How exact are the augmentation's x-flip and quarter turn on real images?

    python bench/augment_flip.py --data emoji32.zip [--images 64]

For the first --images images of a prepared dataset (in [-1, 1]): the AugmentPipe with only xflip (then only
rotate90) at p=1, and the same mirror given to the filtered resampler as a general affine transform
(AugmentPipe.apply_affine, the path every non-whole-pixel transform takes). Printed per case: the mean absolute
difference from the exact flip/turn of the transformed samples, and from the exact one rolled by -1 and +1 px
along x (equal when the result is not shifted to either side).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.metrics.reals import open_dataset  # noqa: E402
from engine.train.augment import AugmentPipe, rotate2d, scale2d  # noqa: E402


def distances(y, exact):
    return {"exact": (y - exact).abs().mean().item(),
            "roll_-1": (y - torch.roll(exact, -1, 3)).abs().mean().item(),
            "roll_+1": (y - torch.roll(exact, 1, 3)).abs().mean().item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    ds = open_dataset(args.data)
    n = min(args.images, len(ds))
    x = torch.stack([torch.from_numpy(np.asarray(ds[i][0])) for i in range(n)]).float() / 127.5 - 1
    torch.manual_seed(0)
    rows = []
    pipe = AugmentPipe(xflip=1)
    pipe.p = 1.0
    y = pipe(x)
    flipped = [i for i in range(n) if not torch.equal(y[i], x[i])]
    rows.append(("pipeline, xflip only, p=1 (flipped samples)", distances(y[flipped], x[flipped].flip(3))))
    pipe = AugmentPipe(rotate90=1)
    pipe.p = 1.0
    y = pipe(x)
    turned = [i for i in range(n) if torch.equal(y[i], torch.rot90(x[i], 1, [1, 2]))]
    rows.append(("pipeline, rotate90 only, p=1 (samples turned once)",
                 distances(y[turned], torch.rot90(x[turned], 1, [2, 3]))))
    eye = torch.eye(3).expand(n, 3, 3)
    resampler = AugmentPipe()
    rows.append(("resampler, mirror as an affine", distances(resampler.apply_affine(x, eye @ scale2d(-1, 1, n, "cpu")),
                                                             x.flip(3))))
    quarter = eye @ rotate2d(torch.full([n], -math.pi / 2), n, "cpu")
    rows.append(("resampler, quarter turn as an affine",
                 distances(resampler.apply_affine(x, quarter), torch.rot90(x, -1, [2, 3]))))
    for name, d in rows:
        print(json.dumps({"case": name, "images": n, **{k: round(v, 4) for k, v in d.items()}}))


if __name__ == "__main__":
    main()

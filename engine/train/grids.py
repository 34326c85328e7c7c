"""What a run shows of itself besides its statistics: reals.png, the fakes grids, and the metrics at snapshots.

The images go through engine.generate's helpers (the same uint8 conversion, grid layout and PNG writing as the
generate command), so a grid of the run and a grid of its exported network look alike.
"""

import math

import numpy as np
import torch

from engine.errors import UserError
from engine.generate import to_uint8
from engine.media import make_grid, save_image, to_pil
from engine.train import distributed


class GridSetup:
    """The fixed images of reals.png and the fixed latents of fakes*.png, sized for the resolution
    (at most 12 x 8 images and about 1024 x 768 pixels; larger images are shown fewer at a time)."""

    def __init__(self, dataset, label_table, z_dim, seed):
        res = dataset.resolution
        self.cols = max(2, min(12, 1024 // res))
        self.rows = max(2, min(8, 768 // res))
        n = self.cols * self.rows
        order = np.random.RandomState(seed).permutation(len(dataset))
        self.indices = [int(order[i % len(order)]) for i in range(n)]
        self.dataset = dataset
        self.z = torch.from_numpy(np.random.RandomState(seed + 1).randn(n, z_dim).astype(np.float32))
        self.c = label_table[self.indices] if label_table.shape[1] else torch.zeros([n, 0])

    def _save(self, images, path):
        grid = make_grid(images, self.cols, self.rows)
        if grid.shape[1] > 1024:  # large resolutions: shrink the sheet, not the number of images below 2 x 2
            grid = np.asarray(to_pil(grid).reduce(math.ceil(grid.shape[1] / 1024)))
        save_image(grid, path)

    def save_reals(self, path):
        images = [self.dataset[i][0].transpose(1, 2, 0) for i in self.indices]
        self._save(images, path)

    @torch.no_grad()
    def save_fakes(self, G, path, device, batch):
        batch = max(batch, 32)  # inference only: larger chunks cost little memory and save per-call overhead
        images = []
        for z, c in zip(self.z.split(batch), self.c.split(batch)):
            images.extend(to_uint8(G(z.to(device), c.to(device), noise_mode="const")))
        self._save(images, path)


def run_metrics(cfg, env, G_ema, snapshot_name, log):
    """Rank 0 evaluates cfg.metrics on G_ema and appends metric-<name>.jsonl; the others wait."""
    if env.is_main:
        try:
            from engine.metrics import append_metric_jsonl, compute_many
        except ImportError as e:
            log.line(f"metrics skipped: the metrics module is not available ({e})")
        else:
            try:
                results = compute_many(cfg.metrics, G_ema, cfg.data, env.device)
                for result in results:
                    result["num_gpus"] = env.world_size
                    append_metric_jsonl(cfg.run_dir, result, snapshot_name)
                    value = next(iter(result["results"].values()))
                    log.line(f"metric {result['metric']} = {value:.4f} ({result['total_time_str']})")
            except UserError as e:
                log.line(f"metrics skipped: {e}")
    distributed.barrier(env)

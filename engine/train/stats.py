"""Training statistics: values reported during a tick, reduced over ranks at its end into {num, mean, std}.

Values stay on the device as running moments (count, sum, sum of squares in float64), so reporting never
waits for the GPU; the only synchronisation is the reduction at the end of a tick.
"""

import math

import torch

from engine.train import distributed


class StatsCollector:
    def __init__(self, device):
        self.device = torch.device(device)
        self._moments = {}

    def report(self, name, value):
        """Add a tensor (any shape, each element one sample) or a number to the statistic `name`."""
        if torch.is_tensor(value):
            v = value.detach().flatten().to(device=self.device, dtype=torch.float64)
        else:
            v = torch.as_tensor([float(value)], dtype=torch.float64, device=self.device)
        m = torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64, device=self.device),
                         v.sum(), v.square().sum()])
        if name in self._moments:
            self._moments[name] += m
        else:
            self._moments[name] = m

    def collect(self, env):
        """Reduce over ranks and reset -> {name: {'num', 'mean', 'std'}} (every rank gets the same)."""
        names = sorted(set().union(*distributed.all_gather_object(sorted(self._moments), env)))
        if not names:
            return {}
        zero = torch.zeros([3], dtype=torch.float64, device=self.device)
        stacked = torch.stack([self._moments.get(n, zero) for n in names])
        distributed.all_reduce_sum(stacked, env)
        self._moments = {}
        out = {}
        for name, (num, total, sq) in zip(names, stacked.cpu().tolist()):
            if num <= 0:
                continue
            mean = total / num
            var = max(sq / num - mean * mean, 0.0)
            out[name] = {"num": num, "mean": mean, "std": math.sqrt(var)}
        return out

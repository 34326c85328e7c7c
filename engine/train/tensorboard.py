"""TensorBoard event files beside stats.jsonl, when the tensorboard package is installed (it is optional).

The same scalars as stats.jsonl (the mean of each statistic), at NVIDIA's step (whole kimg) and the tick's wall
time, so `tensorboard --logdir <runs folder>` shows our runs as it shows NVIDIA's. Without tensorboard nothing
is written (and nothing said: it is optional).
"""

import math


def available():
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:  # ImportError, or a tensorboard too old for this torch
        return False
    return True


class EventLog:
    """One run's event file. run_dir None (other ranks) or no tensorboard: every call does nothing.

    log: a function taking one line, told once if the file cannot be opened or written.
    """

    def __init__(self, run_dir, log=None):
        self.log = log
        self.writer = None
        if not run_dir or not available():
            return
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.writer = SummaryWriter(log_dir=str(run_dir))
        except Exception as e:  # the run goes on with stats.jsonl alone
            self._give_up("cannot open", e)

    def _give_up(self, what, e):
        self.writer = None
        if self.log is not None:
            self.log(f"note: TensorBoard events off for this run: {what} the event file ({type(e).__name__}: {e}); "
                     f"stats.jsonl has every value")

    def write(self, entries):
        """Add one tick's stats record ({name: {'num', 'mean', 'std'}}, 'timestamp') and flush it to disk."""
        if self.writer is None:
            return
        kimg = entries.get("Progress/kimg")
        kimg = kimg.get("mean") if isinstance(kimg, dict) else kimg
        step = int(kimg) if isinstance(kimg, (int, float)) and math.isfinite(kimg) else None
        walltime = entries.get("timestamp") if isinstance(entries.get("timestamp"), (int, float)) else None
        try:
            for name, entry in entries.items():
                mean = entry.get("mean") if isinstance(entry, dict) else None
                if isinstance(mean, (int, float)) and not isinstance(mean, bool):
                    self.writer.add_scalar(name, float(mean), global_step=step, walltime=walltime)
            self.writer.flush()
        except Exception as e:  # a full disk must not stop training
            self._give_up("cannot write", e)

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass  # already flushed after every tick
            self.writer = None

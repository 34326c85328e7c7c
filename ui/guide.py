"""The first-run guide shown above the tabs: the three steps, kimg in plain words, where the time estimate is."""

from __future__ import annotations

from ui.common import Studio

GUIDE = """
**From pictures to new pictures, in three steps (and a fourth to explore)**

1. **Data** — turn pictures into a training set: the built-in emoji set, a zip or images you upload
   {folder_hint}. Everything is resized to one square size (8–1024 px; 32 px trains in minutes on a CPU).
2. **Train** — pick the dataset and a preset (*tiny* for a first try) and press *Start a new run*. The page
   follows the run by itself: progress, curves, the newest generated images. *Stop* keeps a snapshot;
   *Resume* goes on from it.
3. **Generate** — pick the demo network or any snapshot, type seeds (each seed is one image, the same every
   time), and press *Generate images*; *Make video* morphs smoothly from seed to seed.
4. **Explore** — move through the network's space live: upload a photo to find its latent (projection), slide
   along the directions the network learned, and save latents by name to use on *Generate*.

**What is a kimg?** Training length is counted in thousands of images shown to the discriminator: 10 kimg means
it has looked at 10,000 images (repeats included). Quality grows with kimg, fast at first, then slowly: on the
emoji at 32 px the tiny preset looks like rough emoji after 20-40 kimg and keeps improving for hundreds; large
models train for thousands.

**How long will it take?** On the *Train* tab, *Estimate time on this machine* times a few training steps of
the chosen settings here (or reuses the speed of an earlier run with the same preset) and turns the length in
kimg into minutes or hours. {speed}
"""


def guide_markdown(studio: Studio, speed_line: str = "") -> str:
    folder_hint = "" if studio.shared else "or a folder on this computer"
    return GUIDE.format(folder_hint=folder_hint, speed=speed_line).strip()


def has_history(studio: Studio) -> bool:
    """True once the user has a dataset and a run: then the guide has done its job and folds itself."""
    ds = any(p.suffix == ".zip" or p.is_dir() for p in studio.datasets_dir.iterdir())
    runs = any(p.is_dir() for p in studio.runs_dir.iterdir())
    return ds and runs


def fold_once(studio: Studio, folded: bool):
    """(accordion update, folded) for a page load or a tab change: the guide folds the first time this page finds
    a dataset and a run; after that, opening and closing it is the visitor's own business."""
    import gradio as gr

    if not folded and has_history(studio):
        return gr.update(open=False), True
    return gr.skip(), bool(folded)

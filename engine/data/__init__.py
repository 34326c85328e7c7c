"""Datasets: preparing pictures into NVIDIA's dataset layout and reading one back.

engine.data.prepare  -- prepare()
engine.data.dataset  -- ImageDataset, and for display summary(), preview_grid(), report_path(), read_report()
engine.data.dataset  -- ImageDataset (for training, through torch's DataLoader)
engine.data.sources  -- folder, zip, built-in emoji, CIFAR-10 and MNIST sources
engine.data.imaging  -- one picture -> one training image (colour, EXIF, crop/pad/stretch)
"""

# Choices shared by the command line, the dashboard and the library (kept here so that listing them imports
# nothing heavy).
TRANSFORMS = ("center-crop", "center-crop-wide", "pad", "stretch")
RESIZE_FILTERS = ("lanczos", "box")
LABEL_MODES = ("auto", "folders", "json", "none")

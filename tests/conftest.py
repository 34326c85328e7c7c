import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("STUDIO_TEST", "1")
# Tests never try to download NVIDIA's Inception detector: they use the offline one shipped in a wheel.
# (tests/test_metrics.py exercises the download path itself against local URLs.)
os.environ.setdefault("STUDIO_DETECTOR", "offline")

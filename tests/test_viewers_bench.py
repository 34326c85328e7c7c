"""bench/viewers.py at a small size: concurrent viewers each get all of their grids, and the figures come out."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.slow


def test_concurrent_viewers_each_get_their_grids():
    import viewers

    r = viewers.run(viewers=6, grids=2, seeds=4)
    assert r["all_got_their_grids"], r["errors"]
    assert r["requests"] == 12
    assert 0 < r["p50_s"] <= r["p90_s"] <= r["p99_s"] <= r["max_s"]
    assert r["owner_s"] is not None and r["owner_s"] > 0

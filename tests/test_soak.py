"""bench/soak.py end to end, briefly: its own app on 127.0.0.1, a tiny training, two visitors for a few seconds."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "soak.py"


@pytest.mark.slow
def test_short_soak_serves_every_kind_and_cleans_up(tmp_path):
    out = tmp_path / "soak"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # No timeout: on a shared machine the wall time says little (the soak stops itself after its duration).
    proc = subprocess.run([sys.executable, str(BENCH), "--duration", "12", "--clients", "2", "--think", "0.3",
                           "--images", "32", "--sample", "1", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "soak.json").read_text())
    assert report["passed"] and report["failures"] == []
    assert report["requests"]["errors"] == 0 and report["errors_first"] == []
    for kind in ("grid", "gif", "live", "networks", "status", "health"):
        k = report["kinds"][kind]
        assert k["served"] > 0 and k["errors"] == 0, (kind, k)
        assert 0 < k["p50_ms"] <= k["p90_ms"] <= k["p99_ms"] <= k["max_ms"]
    mem = report["memory"]
    assert mem["levelled"] is None and "too short" in mem["why"]  # a few seconds of load prove nothing either way
    assert 100 < mem["first_mib"] <= mem["max_mib"] and mem["last_mib"] <= mem["max_mib"]
    assert report["training"]["state_end"] == "running" and report["training"]["trainer_mib_max"] > 0
    assert report["load_avg_1min"]["max"] >= report["load_avg_1min"]["min"] >= 0
    assert "training stopped through the dashboard" in report["shutdown"] and "app exited 0" in report["shutdown"]

    text = (out / "soak.md").read_text()
    assert "| grid | `/generate` |" in text and "Verdict: PASS" in text
    assert "python bench/soak.py --duration 12" in text
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert any(s["phase"] == "load" for s in samples) and all(s["app_alive"] for s in samples)
    assert "StyleGAN Studio on http://127.0.0.1:" in (out / "app.log").read_text()

    # Nothing of the soak is left running (neither the app nor its training) and its workdir is gone.
    work = re.search(r"workdir (\S+)/studio\)", proc.stdout).group(1)
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if work in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not Path(work).exists()

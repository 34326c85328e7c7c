"""The README's setup-and-run command, run as written into a fresh virtual environment.

Keeps the README true: the command must install everything from requirements.txt, `python app.py` must serve the
dashboard, and the built-in demo network must generate images with the freshly installed packages.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo-network.pt"


def readme_commands():
    """The README's first code block: (setup-and-run command, test command)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines[0], lines[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_names_the_ci_test_command():
    setup, test = readme_commands()
    assert setup.endswith("python app.py"), setup
    assert "requirements.txt" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run installs what the tests need and then runs this same test command.
    assert test == "bash .ci/run" or test in ci, (test, ci)
    assert "pytest" in ci


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.exists(), reason="assets/demo-network.pt is not in this checkout")
def test_readme_setup_command_in_a_fresh_venv(tmp_path):
    setup, _ = readme_commands()
    # A copy of the tracked files, so the venv and the workdir land outside the checkout.
    work = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    names = [n for n in files.decode().split("\0") if n]
    if not names:
        pytest.fail("git ls-files listed nothing: run the tests from a git checkout")
    for name in names:
        src = ROOT / name
        if src.is_file():
            dst = work / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    port = free_port()
    command = f"{setup} --port {port} --workdir {tmp_path / 'studio'}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    log = open(tmp_path / "setup.log", "w")
    proc = subprocess.Popen(["bash", "-c", command], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        served = False
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    served = r.status == 200 and b"StyleGAN Studio" in r.read()
                if served:
                    break
            except OSError:
                pass
            time.sleep(3)
        log.flush()
        assert served, "the dashboard did not come up:\n" + (tmp_path / "setup.log").read_text()[-3000:]
        venv_python = work / ".venv" / "bin" / "python"
        assert venv_python.exists()
        out = tmp_path / "gen"
        r = subprocess.run([str(venv_python), "-m", "engine", "generate", "--network", "assets/demo-network.pt",
                            "--seeds", "0-3", "--outdir", str(out)], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        pngs = sorted(p.name for p in out.glob("seed*.png"))
        assert pngs == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0003.png"]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

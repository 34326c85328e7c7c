"""The check a compiled kernel passes before it runs (engine/ops/verify.py): a wrong kernel is caught and the
reference runs instead, a training step is then the reference's, and the verdict is kept beside the build.

The wrong kernels come from the STUDIO_OPS_FAULT test hook (a wrong element, NaN, an exception, a crash).
Every test works in a private cache holding copies of this machine's finished builds, so no verdict written here
reaches the real cache.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.commands import info
from engine.ops import build, dispatch, verify
from engine.ops.bias_act import _bias_act_ref, activation_funcs, bias_act
from engine.ops.upfirdn2d import _upfirdn2d_ref, setup_filter, upfirdn2d

ROOT = Path(__file__).resolve().parents[1]
HAVE_CXX = shutil.which(os.environ.get("CXX") or "c++") is not None

pytestmark = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler on this machine: nothing to build")


@pytest.fixture(scope="module")
def built():
    """This machine's finished C++ builds (built once into the normal cache if needed)."""
    folders = {}
    for name in dispatch.KERNEL_OPS:
        try:
            build.load(name, "cpu")
        except build.BuildError as e:
            pytest.fail(f"the C++ {name} kernel did not build: {e}")
        folders[name] = build.build_dir(name, "cpu")
    return folders


def use_private_cache(monkeypatch, root, device, folders):
    """STUDIO_CACHE=root with copies of the finished builds `folders` ({op: build folder}) but none of their
    verdicts, STUDIO_OPS=compiled, no test fault, and a dispatch that knows nothing yet. Also used by
    tests/test_extensions_cuda.py."""
    monkeypatch.setenv("STUDIO_CACHE", str(root))
    monkeypatch.delenv("STUDIO_OPS_FAULT", raising=False)
    monkeypatch.delenv("STUDIO_OPS_CHECK_SUBPROCESS", raising=False)
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    for name, src in folders.items():
        shutil.copytree(src, build.build_dir(name, device), ignore=shutil.ignore_patterns("check-*", "*.lock"))
    for attr in ("_kernels", "_failures", "_verdicts"):
        monkeypatch.setattr(dispatch, attr, {})
    return root


@pytest.fixture
def cache(built, tmp_path, monkeypatch):
    return use_private_cache(monkeypatch, tmp_path / "cache", "cpu", built)


def stderr_lines(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def calls():
    """One call of each public op, channels-last as the networks' CPU layout, and the reference's answers."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 8, 8, generator=gen).to(memory_format=torch.channels_last)
    b = torch.randn(16, generator=gen)
    f = setup_filter([1, 3, 3, 1])
    got = (bias_act(x, b, act="lrelu", clamp=1.0), upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4))
    want = (_bias_act_ref(x, b, 1, activation_funcs["lrelu"], 0.2, 2 ** 0.5, 1.0),
            _upfirdn2d_ref(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4))
    return got, want


def test_sound_kernels_pass_their_check_quickly(cache):
    for name in dispatch.KERNEL_OPS:
        k = dispatch._kernel(name, "cpu")
        for dtype in ("float32", "float64"):
            v = verify.run_check(name, "cpu", dtype, k)
            assert v["ok"], verify.describe(v)
            assert v["error"] is None and 0 <= v["worst"] <= verify.TOLERANCE[dtype]
            assert v["where"]  # says which result came closest to the tolerance


@pytest.mark.parametrize("kind, says", [("perturb", "worst error"), ("nan", "non-finite value"),
                                        ("raise", "RuntimeError: deliberate fault")])
def test_wrong_kernel_is_caught_once_and_the_reference_runs(cache, monkeypatch, capsys, kind, says):
    monkeypatch.setenv("STUDIO_OPS_FAULT", f"upfirdn2d={kind}")
    capsys.readouterr()
    for _ in range(3):
        (a, u), (a_ref, u_ref) = calls()
        assert torch.equal(u, u_ref)  # the wrong kernel never produced a result the caller saw
        torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-5)  # bias_act is sound: compiled and verified
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines  # one line, not one per call
    line = lines[0]
    assert line.startswith("studio: compiled upfirdn2d (C++) failed its check on cpu float32: "), line
    assert says in line and line.endswith("using the reference implementation"), line
    assert dispatch.compiled("upfirdn2d", torch.zeros(1, 16, 4, 4)) is None
    assert dispatch.compiled("bias_act", torch.zeros(1, 16, 4, 4)) is dispatch._kernels[("bias_act", "cpu")]
    rows = {(r["op"], r["dtype"]): r for r in dispatch.op_status("cpu")}
    assert rows[("upfirdn2d", "float32")]["state"] == "failed" and says in rows[("upfirdn2d", "float32")]["detail"]
    assert rows[("upfirdn2d", "float64")]["state"] == "unchecked"  # float64 has not been used yet
    assert rows[("bias_act", "float32")]["state"] == "verified"
    assert "float32: failed its check, reference" in dispatch.op_paths("cpu")["upfirdn2d"]
    if kind == "perturb":  # a fault the check did not cover would show here: the kernel is really wrong
        k = dispatch._kernels[("upfirdn2d", "cpu")]
        x = torch.randn(1, 16, 4, 4)
        assert not torch.allclose(k.upfirdn2d(x, None, (1, 1), (1, 1), (0, 0, 0, 0), False, 1), x)


def tiny_step():
    """Every phase of the StyleGAN2 loss (main, R1, path length) on tiny networks: the losses' gradients."""
    from engine.nets import Discriminator, Generator
    from engine.train.augment import make_pipe
    from engine.train.loss import StyleGAN2Loss

    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=1),
                  channel_base=64, channel_max=16).requires_grad_(False)
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=16)
    D.requires_grad_(False)
    pipe = make_pipe("bgc")
    pipe.p = 0.5
    loss = StyleGAN2Loss(G, D, augment_pipe=pipe, r1_gamma=1.0, style_mixing_prob=0.9, pl_weight=2.0, device="cpu")
    real = torch.rand(4, 3, 8, 8) * 2 - 1
    z, c = torch.randn(4, 8), torch.zeros(4, 0)
    out = []
    for phase, module in (("Gmain", G), ("Greg", G), ("Dmain", D), ("Dreg", D)):
        module.requires_grad_(True)
        loss.accumulate_gradients(phase, real, c, z, c, gain=1.0)
        module.requires_grad_(False)
        out += [p.grad.clone() for p in module.parameters() if p.grad is not None]
        for p in module.parameters():
            p.grad = None
    return out


def test_training_step_with_a_wrong_kernel_matches_the_reference(cache, monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")
    want = tiny_step()
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    monkeypatch.setenv("STUDIO_OPS_FAULT", "bias_act=perturb,upfirdn2d=perturb")
    got = tiny_step()
    assert len(got) == len(want) > 10
    assert all(torch.equal(u, v) for u, v in zip(got, want))  # both ops fell back: the reference's exact step
    assert {v["ok"] for v in dispatch._verdicts.values()} == {False}
    # Without the check the same wrong kernels would have trained on: the step above was the fallback's doing.
    monkeypatch.setattr(dispatch, "_verified", lambda *a: True)
    wrong = tiny_step()
    assert not all(torch.allclose(u, v) for u, v in zip(wrong, want))


CHILD = textwrap.dedent("""
    from engine.ops import verify
    import test_ops_verify as t
    (a, u), (a_ref, u_ref) = t.calls()
    assert (u == u_ref).all()
    print("checks", verify.checks_run)
""")


def run_child(cache, **env):
    e = dict(os.environ, STUDIO_CACHE=str(cache), STUDIO_OPS="compiled",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **env)
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()[-1], [ln for ln in p.stderr.splitlines() if ln.strip()]


@pytest.mark.slow
def test_verdict_is_reused_by_a_fresh_process_and_redone_when_sources_change(cache, monkeypatch, tmp_path):
    fault = {"STUDIO_OPS_FAULT": "upfirdn2d=perturb"}
    checks, lines = run_child(cache, **fault)
    assert checks == "2"  # bias_act (sound) and upfirdn2d (wrong), float32
    assert len(lines) == 1 and "failed its check on cpu float32" in lines[0] and "earlier" not in lines[0], lines
    stored = {p: p.read_bytes() for p in cache.rglob("check-*.json")}
    assert len(stored) == 2
    checks, lines = run_child(cache, **fault)
    assert checks == "0"  # both verdicts read from the cache: no check ran
    assert len(lines) == 1 and "[earlier check" in lines[0], lines
    assert {p: p.read_bytes() for p in cache.rglob("check-*.json")} == stored

    # The same kernel without the fault is a different verdict (the hook is part of its key).
    monkeypatch.setenv("STUDIO_OPS_FAULT", fault["STUDIO_OPS_FAULT"])
    assert verify.read_verdict("upfirdn2d", "cpu", "float32")["ok"] is False
    assert verify.read_verdict("bias_act", "cpu", "float32")["ok"] is True
    # New kernel sources: a new build folder, so no verdict, and the check runs again.
    kernel = dispatch._kernel("upfirdn2d", "cpu")  # loaded before the sources change (no rebuild here)
    src = tmp_path / "extensions"
    shutil.copytree(build.SOURCE_DIR, src)
    with open(src / "upfirdn2d.cpp", "a") as fh:
        fh.write("\n// changed\n")
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    assert verify.read_verdict("upfirdn2d", "cpu", "float32") is None
    assert verify.read_verdict("bias_act", "cpu", "float32")["ok"] is True  # its sources did not change
    before = verify.checks_run
    v, fresh = verify.ensure("upfirdn2d", "cpu", "float32", kernel)
    assert fresh and not v["ok"] and verify.checks_run == before + 1
    assert verify.read_verdict("upfirdn2d", "cpu", "float32") == v
    # Another machine (here: another compiler) does not inherit the verdict either.
    monkeypatch.setattr(build, "_compiler_id", lambda: "c++: some other compiler 99")
    assert verify.read_verdict("bias_act", "cpu", "float32") is None


@pytest.mark.slow
def test_a_check_that_crashes_is_contained(cache, monkeypatch, capsys):
    # The CUDA path: the check runs in a child; a kernel that kills the process kills only the child.
    monkeypatch.setenv("STUDIO_OPS_CHECK_SUBPROCESS", "1")
    monkeypatch.setenv("STUDIO_OPS_FAULT", "bias_act=abort")
    capsys.readouterr()
    (a, u), (a_ref, u_ref) = calls()
    assert torch.equal(a, a_ref)
    torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-5)  # upfirdn2d passed its check in a child
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("studio: compiled bias_act (C++) failed its check on cpu float32: the check crashed")
    assert verify.read_verdict("bias_act", "cpu", "float32")["ok"] is False
    assert verify.read_verdict("upfirdn2d", "cpu", "float32")["ok"] is True


def test_info_reports_each_op_device_and_dtype(cache, monkeypatch, capsys):
    monkeypatch.setenv("STUDIO_OPS_FAULT", "bias_act=nan")
    got = info.collect(check=True)
    capsys.readouterr()
    states = {(r["op"], r["device"], r["dtype"]): r["state"] for r in got["op_checks"]}
    assert states == {("bias_act", "cpu", "float32"): "failed", ("bias_act", "cpu", "float64"): "failed",
                      ("upfirdn2d", "cpu", "float32"): "verified", ("upfirdn2d", "cpu", "float64"): "verified"}
    monkeypatch.setenv("STUDIO_OPS", "ref")
    assert {r["state"] for r in info.collect()["op_checks"]} == {"reference"}
    # The training log's first lines: the dtypes the run uses, checked before the first step.
    monkeypatch.setenv("STUDIO_OPS", "compiled")
    lines = dispatch.training_lines(torch.device("cpu"), "fp32")
    assert lines[0].startswith("ops: bias_act cpu float32: reference: the compiled C++ kernel failed its check")
    assert lines[1].startswith("ops: upfirdn2d cpu float32: compiled C++ kernel, verified")
    # ...and one line says that the run is on a slow path, why, and what that costs (tests/test_slow_path.py).
    assert lines[2].startswith("slow path: bias_act: reference path (the compiled C++ kernel failed its check: ")
    assert " - about " in lines[2] and "slower per step" in lines[2]
    assert len(lines) == 3

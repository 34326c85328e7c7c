"""A training on the slow path says so once (engine/ops/slowpath.py): an op that should run a compiled kernel but
runs the reference (a failed build, a failed check, STUDIO_OPS=ref) gives one line with the reason and the
measured cost, in the console, log.txt, the Train tab's status and the System tab. The CPU policy's deliberate
use of the reference is not a slow path.

The line for CUDA is built here without CUDA: op_status("cuda") answers on any machine, and the dispatch's state
is given a failed CUDA build and a failed check (a real verdict of a kernel made wrong by the STUDIO_OPS_FAULT
hook). End to end, a short CPU training with a wrong upfirdn2d kernel writes the line to log.txt once.
"""

import dataclasses
import json
import math

import pytest
import torch

from engine.ops import build, dispatch, slowpath, verify
from engine.ops.build import BuildError
from test_ops_verify import HAVE_CXX, built, use_private_cache  # noqa: F401  (built: a fixture)
from train_helpers import make_dataset, tiny_options

NO_NVCC = "the CUDA toolkit (nvcc) was not found; set CUDA_HOME"
EMPTY = {"entries": []}
H200 = {"entries": [{"device": "cuda", "name": "NVIDIA H200", "ops": "all", "ratio": 2.42,
                     "what": "256 px, auto preset, fp16", "source": "docs/BENCHMARKS.md"}]}


def row(op, dtype, cause, reason="", device="cuda"):
    return {"op": op, "device": device, "dtype": dtype, "cause": cause, "reason": reason, "state": "x",
            "detail": ""}


@pytest.fixture
def fresh_dispatch(monkeypatch):
    for attr in ("_kernels", "_failures", "_verdicts"):
        monkeypatch.setattr(dispatch, attr, {})
    monkeypatch.delenv("STUDIO_OPS", raising=False)
    monkeypatch.delenv("STUDIO_OPS_FAULT", raising=False)


# ------------------------------------------------------------------------------------ which rows are slow paths

def test_the_cpu_policy_and_working_kernels_are_not_a_slow_path(fresh_dispatch, monkeypatch):
    monkeypatch.setattr(dispatch, "CPU_KERNEL", {"bias_act": False, "upfirdn2d": False})
    rows = dispatch.op_status("cpu")
    assert {r["cause"] for r in rows} == {"policy"}
    assert slowpath.lines(rows, "cpu") == []
    fine = [row("bias_act", "float32", None), row("upfirdn2d", "float16", None)]
    assert slowpath.lines(fine, "cuda", "NVIDIA H200") == []
    # A failed check in a dtype the training does not use (float64) is no slow path of that training either.
    assert slowpath.lines([row("bias_act", "float64", "check", "wrong")], "cuda", "NVIDIA H200") == []


def failing_verdict(monkeypatch, built):  # noqa: F811
    """A real verdict of the check against a kernel the fault hook made wrong (on the CPU: no GPU needed)."""
    from engine.ops import fused

    monkeypatch.setenv("STUDIO_OPS_FAULT", "upfirdn2d=perturb")
    kernel = fused.Upfirdn2dKernel(verify.with_fault("upfirdn2d", build.load("upfirdn2d", "cpu")), "cpu")
    v = verify.run_check("upfirdn2d", "cpu", "float32", kernel)
    monkeypatch.delenv("STUDIO_OPS_FAULT")
    assert not v["ok"] and v["worst"] > verify.TOLERANCE["float16"]
    return dict(v, device="cuda", dtype="float16")


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: no kernel to make wrong")
def test_the_line_for_cuda_is_built_without_cuda(fresh_dispatch, monkeypatch, built):  # noqa: F811
    # bias_act: its CUDA build failed (no nvcc); upfirdn2d: built, but failed its float16 check.
    dispatch._failures[("bias_act", "cuda")] = NO_NVCC
    dispatch._kernels[("upfirdn2d", "cuda")] = object()
    dispatch._verdicts[("upfirdn2d", "cuda", "float16")] = failing_verdict(monkeypatch, built)
    rows = dispatch.op_status("cuda")
    causes = {(r["op"], r["dtype"]): r["cause"] for r in rows}
    assert causes[("bias_act", "float16")] == causes[("bias_act", "float32")] == "build"
    assert causes[("upfirdn2d", "float16")] == "check" and causes[("upfirdn2d", "float32")] is None

    fp16 = slowpath.lines(rows, "cuda", "NVIDIA H200", slowpath.training_dtypes("cuda", "fp16"), table=EMPTY)
    assert len(fp16) == 1
    line = fp16[0]
    assert line.startswith(f"slow path: bias_act: reference path (compiled CUDA kernel unavailable: {NO_NVCC}); "
                           "upfirdn2d float16: reference path (the compiled CUDA kernel failed its check: worst "
                           "error "), line
    assert line.endswith(" - the cost on this GPU (NVIDIA H200) is not measured yet "
                         "(bash bench/gpu_round.sh slowcost measures it)"), line
    assert "\n" not in line
    # fp32 training: only bias_act is slow; bf16: upfirdn2d's bfloat16 is unchecked, so again only bias_act.
    for precision in ("fp32", "bf16"):
        (only,) = slowpath.lines(rows, "cuda", "NVIDIA H200", slowpath.training_dtypes("cuda", precision),
                                 table=EMPTY)
        assert only.startswith("slow path: bias_act: reference path (compiled CUDA kernel unavailable: ")
        assert "upfirdn2d" not in only
    # Once the GPU round has measured this GPU, the same line carries the figure.
    (measured,) = slowpath.lines(rows, "cuda", "NVIDIA H200", ["float32", "float16"], table=H200)
    assert measured.endswith(" - about 2.4x slower per step with every kernel op on the reference, less with "
                             "fewer ops on it (measured: 256 px, auto preset, fp16; docs/BENCHMARKS.md)"), measured
    (other,) = slowpath.lines(rows, "cuda", "NVIDIA H100 80GB HBM3", ["float32"], table=H200)
    assert other.endswith("the cost on this GPU (NVIDIA H100 80GB HBM3) is not measured yet (bash "
                          "bench/gpu_round.sh slowcost measures it); on NVIDIA H200 it was about 2.4x slower per "
                          "step"), other


def test_studio_ops_ref_is_a_slow_path_on_either_device(fresh_dispatch, monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")
    (line,) = slowpath.lines(dispatch.op_status("cpu"), "cpu")
    assert line.startswith("slow path: bias_act, upfirdn2d: reference path (STUDIO_OPS=ref) - about 1.2x slower "
                           "per step with every kernel op on the reference (measured: 32 px training step"), line
    (line,) = slowpath.lines(dispatch.op_status("cuda"), "cuda", None, table=EMPTY)
    assert line.endswith("the cost on this GPU is not measured yet (bash bench/gpu_round.sh slowcost measures it)")


# ----------------------------------------------------------------------------------------------- the cost table

def test_the_shipped_table_holds_the_measured_cpu_figure():
    table = slowpath.read_table()
    (cpu,) = [e for e in table["entries"] if e["device"] == "cpu"]
    assert cpu["ratio"] == 1.16 and "train_speed.py" in cpu["command"] and cpu["source"].startswith("docs/")
    assert slowpath.cost_phrase("cpu", None, ["bias_act"], table).startswith(
        "about 1.2x slower per step with every kernel op on the reference, less with fewer ops on it (measured: ")


def test_a_missing_or_damaged_table_reads_as_not_measured(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        table = slowpath.read_table(path)
        assert table["entries"] == []
        assert slowpath.cost_phrase("cpu", None, ["bias_act"], table) == \
            "the cost on this CPU is not measured yet (bash bench/gpu_round.sh slowcost --cpu measures it)"
    bad.write_text(json.dumps({"entries": [{"device": "cuda", "name": "X", "ratio": "fast"}, {"device": "tpu"}]}))
    assert slowpath.read_table(bad)["entries"] == []


def test_a_figure_for_the_exact_ops_wins_over_the_all_ops_one():
    table = {"entries": H200["entries"] + [{"device": "cuda", "name": "NVIDIA H200", "ops": "upfirdn2d",
                                             "ratio": 1.37, "what": "one op"}]}
    assert slowpath.cost_phrase("cuda", "NVIDIA H200", ["upfirdn2d"], table) == \
        "about 1.4x slower per step with these ops on the reference (measured: one op)"
    assert slowpath.cost_phrase("cuda", "nvidia h200", ["bias_act", "upfirdn2d"], table).startswith(
        "about 2.4x slower per step with every kernel op on the reference (measured: ")
    # A figure within the measurement's noise of 1 does not claim a slowdown.
    even = {"entries": [dict(H200["entries"][0], ratio=1.02)]}
    assert slowpath.cost_phrase("cuda", "NVIDIA H200", ["bias_act"], even) == \
        "no slower per step than the compiled kernels within the measurement (measured: 256 px, auto preset, fp16; " \
        "docs/BENCHMARKS.md)"


def test_add_writes_a_figure_the_line_then_uses(tmp_path, capsys):
    t = tmp_path / "cost.json"
    t.write_text(json.dumps(slowpath.read_table()))
    add = ["--table", str(t), "add", "--device", "cuda", "--name", "NVIDIA H200", "--what", "256 px"]
    assert slowpath.main(add + ["--ratio", "3.0"]) == 0
    assert slowpath.main(add + ["--ratio", "2.5"]) == 0  # replaces the figure of the same GPU and ops
    table = slowpath.read_table(t)
    assert [(e["device"], e["ratio"]) for e in table["entries"]] == [("cpu", 1.16), ("cuda", 2.5)]
    assert slowpath.cost_phrase("cuda", "NVIDIA H200", ["bias_act", "upfirdn2d"], table).startswith("about 2.5x")
    capsys.readouterr()
    assert slowpath.main(["--table", str(t), "add", "--device", "cuda", "--ratio", "2", "--what", "x"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: a CUDA figure needs --name, the GPU's name (torch.cuda.get_device_name)"
    assert slowpath.main(add + ["--ratio", "-1"]) == 2
    assert "is not a plausible ratio" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ reading a log back

def test_the_newest_sessions_line_is_read_back_from_the_log(tmp_path):
    log = tmp_path / "log.txt"
    first = "slow path: upfirdn2d: reference path (wrong) - about 1.2x slower per step"
    log.write_text("run 00000-x: 16 images\nops: bias_act cpu float32: ok\nops: upfirdn2d cpu float32: bad\n"
                   f"{first}\ntick 0 kimg 0.004\n")
    assert slowpath.lines_in_log(log) == [first]
    assert slowpath.lines_in_log(log) == [first]  # nothing new: the same answer
    with open(log, "a") as fh:  # a continued run whose kernels work now
        fh.write("tick 1 kimg 0.008\nresumed x\nops: bias_act cpu float32: ok\nops: upfirdn2d cpu float32: ok\n"
                 "tick 2\n")
    assert slowpath.lines_in_log(log) == []
    with open(log, "a") as fh:  # a third session, its line written in two pieces
        fh.write("resumed x\nops: bias_act cpu float32: ok\nslow path: bias_act: reference path (STUDIO_")
    assert slowpath.lines_in_log(log) == []
    with open(log, "a") as fh:
        fh.write("OPS=ref) - about 1.2x slower per step\n")
    assert slowpath.lines_in_log(log) == ["slow path: bias_act: reference path (STUDIO_OPS=ref) - about 1.2x "
                                          "slower per step"]
    log.write_text("ops: bias_act cpu float32: ok\n")  # replaced by a shorter file: read again from the start
    assert slowpath.lines_in_log(log) == []
    log.write_text(f"ops: bias_act cpu float32: bad\n{first}\n")  # rewritten, longer: read again too
    assert slowpath.lines_in_log(log) == [first]
    assert slowpath.lines_in_log(tmp_path / "none.txt") == []


def test_the_train_and_system_tabs_show_the_line(tmp_path, fresh_dispatch, monkeypatch):
    pytest.importorskip("gradio")
    from ui import system_tab, train_tab
    from ui.supervisor import RunView

    line = "slow path: bias_act: reference path (STUDIO_OPS=ref) - about 1.2x slower per step <measured>"
    (tmp_path / "log.txt").write_text(f"ops: bias_act cpu float32: reference\n{line}\ntick 0\n")
    v = RunView(name="00000-x", run_dir=tmp_path, state="running", kimg=0.1, total_kimg=1.0, live=True)
    page = train_tab.status_html(v, [])
    assert page.count("run-slow-path") == 1
    assert "slow path: bias_act: reference path (STUDIO_OPS=ref) - about 1.2x slower per step &lt;measured&gt;" \
        in page
    (tmp_path / "log.txt").write_text("ops: bias_act cpu float32: compiled\ntick 0\n")
    assert "run-slow-path" not in train_tab.status_html(v, [])

    monkeypatch.setenv("STUDIO_OPS", "ref")
    items = system_tab.slow_path_items({"cpu": dispatch.op_status("cpu")}, [v])
    assert len(items) == 1 and items[0].startswith("- cpu: slow path: bias_act, upfirdn2d: reference path "
                                                   "(STUDIO_OPS=ref) - about 1.2x slower per step")
    (tmp_path / "log.txt").write_text(f"ops: bias_act cpu float32: reference\n{line}\n")
    items = system_tab.slow_path_items({"cpu": dispatch.op_status("cpu")}, [v])
    assert items[1] == f"- training now, 00000-x: {line}"
    monkeypatch.delenv("STUDIO_OPS")
    monkeypatch.setattr(dispatch, "CPU_KERNEL", {"bias_act": False, "upfirdn2d": False})
    assert system_tab.slow_path_items({"cpu": dispatch.op_status("cpu")}, [])[0].startswith("- none: ")


# ------------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the CPU path has no kernel to make wrong")
def test_a_cpu_training_with_a_wrong_kernel_says_it_once(built, tmp_path, monkeypatch, capsys):  # noqa: F811
    from engine import runs
    from engine.train.launch import train

    use_private_cache(monkeypatch, tmp_path / "cache", "cpu", built)
    monkeypatch.delenv("STUDIO_OPS")  # auto: the CPU policy uses the upfirdn2d kernel for resampling calls
    monkeypatch.setenv("STUDIO_OPS_FAULT", "upfirdn2d=perturb")
    data = make_dataset(tmp_path / "data", n=8, res=8)
    opts = tiny_options(data, tmp_path / "runs", kimg=0.008, tick=0.004, cbase=128, cmax=8)
    capsys.readouterr()
    assert train(opts) == 0
    (run,) = [r["path"] for r in runs.list_runs(tmp_path / "runs")]
    log = runs.log_path(run).read_text().splitlines()
    slow = [ln for ln in log if ln.startswith("slow path:")]
    assert len(slow) == 1, log
    assert slow[0].startswith("slow path: upfirdn2d: reference path (the compiled C++ kernel failed its check: "
                              "worst error "), slow[0]
    assert " - about 1.2x slower per step with every kernel op on the reference, less with fewer ops on it " \
        in slow[0]
    assert slow[0].endswith("(measured: 32 px training step, batch 16, cbase 4096 / cmax 128, fp32, 2-core "
                            "x86_64, torch 2.13, 3 runs each; docs/BENCHMARKS.md, Speed on the CPU)"), slow[0]
    assert log.index(slow[0]) < next(i for i, ln in enumerate(log) if ln.startswith("tick 0"))
    out = capsys.readouterr().out
    assert out.count("slow path:") == 1 and slow[0] in out  # the console, once
    assert slowpath.lines_in_log(runs.log_path(run)) == slow

    # Continued without the fault: the new session is on the compiled path, and says nothing.
    monkeypatch.delenv("STUDIO_OPS_FAULT")
    for attr in ("_kernels", "_failures", "_verdicts"):
        monkeypatch.setattr(dispatch, attr, {})
    again = dataclasses.replace(opts, resume=str(run), kimg=0.012)
    assert train(again) == 0
    log = runs.log_path(run).read_text().splitlines()
    assert len([ln for ln in log if ln.startswith("slow path:")]) == 1
    assert slowpath.lines_in_log(runs.log_path(run)) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_cuda_training_with_a_wrong_kernel_says_it_once(tmp_path, monkeypatch, capsys):
    from engine import runs
    from engine.train.launch import train

    try:
        folders = {name: (build.load(name, "cuda"), build.build_dir(name, "cuda"))[1] for name in dispatch.KERNEL_OPS}
    except BuildError as e:
        pytest.fail(f"the CUDA kernels did not build: {e}")
    use_private_cache(monkeypatch, tmp_path / "cache", "cuda", folders)
    monkeypatch.delenv("STUDIO_OPS")
    monkeypatch.setenv("STUDIO_OPS_FAULT", "bias_act=perturb")
    data = make_dataset(tmp_path / "data", n=16, res=16)
    opts = tiny_options(data, tmp_path / "runs", device="cuda", precision="fp16", kimg=0.008, tick=0.004)
    assert train(opts) == 0
    (run,) = [r["path"] for r in runs.list_runs(tmp_path / "runs")]
    slow = [ln for ln in runs.log_path(run).read_text().splitlines() if ln.startswith("slow path:")]
    assert len(slow) == 1, slow
    # float32 and float16 both failed (one phrase for both, or one each when their worst errors differ)
    assert slow[0].startswith("slow path: bias_act"), slow[0]
    assert "reference path (the compiled CUDA kernel failed its check: worst error " in slow[0], slow[0]
    assert "upfirdn2d" not in slow[0]
    name = torch.cuda.get_device_name(0)
    assert f"the cost on this GPU ({name}) is not measured yet" in slow[0] or "slower per step" in slow[0]
    assert math.isfinite(runs.read_stats(run)[-1]["Loss/G/loss"]["mean"])

"""bench/gpu_vs_nvidia.py: the settings given to NVIDIA's train.py, the reading of both trainers' runs, the
modules put on NVIDIA's path, the carried checkout, and our side of the comparison run on the CPU at 16 px."""

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_vs_nvidia as gvn  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "nvidia_sg3_run"  # log.txt, stats.jsonl, training_options.json


def _flags(argv):
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))


@pytest.mark.parametrize("res", [64, 128, 256])
def test_nvidia_flags_are_its_documented_auto_configuration(res):
    # NVIDIA's docs/configs.md ("old StyleGAN2-ADA default configuration", 1 GPU, batch 32): --cfg=stylegan2
    # --gamma=0.0002*res^2/32 --map-depth=2 --glr=0.0025 --dlr=0.0025 --cbase=16384, from our auto preset.
    cfg = gvn.our_config("auto", res, 32)
    flags = _flags(gvn.nvidia_train_args(cfg, "emoji.zip", "runs"))
    assert flags["cfg"] == "stylegan2" and flags["gpus"] == "1" and flags["batch"] == "32"
    assert float(flags["gamma"]) == pytest.approx(0.0002 * res ** 2 / 32, rel=1e-12)
    assert float(flags["gamma"]) == cfg["r1_gamma"]  # exactly the number our trainer uses
    assert (flags["cbase"], flags["cmax"], flags["map-depth"]) == ("16384", "512", "2")
    assert (flags["glr"], flags["dlr"], flags["mbstd-group"]) == ("0.0025", "0.0025", "4")
    assert (flags["mirror"], flags["aug"], flags["metrics"], flags["fp32"]) == ("1", "ada", "none", "0")
    assert (flags["kimg"], flags["tick"]) == ("3", "1")


def test_nvidia_takes_whole_kimg_only():
    cfg = gvn.our_config("auto", 64, 32, kimg=2.5)
    with pytest.raises(gvn.BenchError, match="--kimg 2.5: NVIDIA's train.py takes whole kimg"):
        gvn.nvidia_train_args(cfg, "d.zip", "o")
    assert gvn.main(["--nvidia", "somewhere", "--tick", "0.5", "--out", "unused"]) == 2


def test_nvidia_options_compared_with_ours():
    nv = json.loads((FIXTURE / "training_options.json").read_text())
    ours = gvn.our_config("auto", 64, 32, workers=3)
    assert gvn.compare_options(nv, ours) == []
    nv["G_kwargs"]["channel_base"] = 32768
    nv["loss_kwargs"]["pl_weight"] = 0
    nv["augment_kwargs"].pop("hue")
    diffs = gvn.compare_options(nv, ours)
    assert len(diffs) == 3
    assert "channel base: NVIDIA 32768, ours 16384" in diffs
    assert any(d.startswith("path length weight") for d in diffs)
    assert any(d.startswith("augmentation pipeline") for d in diffs)
    # config F: NVIDIA's stylegan2 defaults, our stylegan2 preset
    f = gvn.our_config("stylegan2", 256, 32)
    flags = _flags(gvn.nvidia_train_args(f, "d.zip", "o"))
    assert (flags["cbase"], flags["map-depth"], flags["gamma"], flags["glr"]) == ("32768", "8", "10", "0.002")


def test_dry_run_options_read_from_its_output():
    text = ("\nTraining options:\n" + json.dumps({"batch_size": 32, "G_kwargs": {"channel_base": 16384}}, indent=2)
            + "\n\nOutput directory:    runs/00000-x\n")
    assert gvn.nvidia_dry_run_options(text)["G_kwargs"]["channel_base"] == 16384
    with pytest.raises(gvn.BenchError, match="no 'Training options:'"):
        gvn.nvidia_dry_run_options("Error: Invalid value for '--cfg'")


def test_nvidia_run_read_from_stats_and_from_log(tmp_path):
    rows = gvn.tick_rows(FIXTURE)
    assert [r["tick"] for r in rows] == [0, 1, 2, 3]
    s = gvn.summarize_ticks(rows)
    # tick 0 (one step, 90 s/kimg with the start-up, 6.02 GB) is left out
    assert s["ticks"] == 3 and s["sec_per_kimg"] == 4.2 and s["spread"] == [4.1, 4.46]
    assert s["peak_gpu_gb"] == 5.01 and s["data_wait"] is None
    # a run killed before stats.jsonl was written: the same figures from log.txt's tick lines
    shutil.copy(FIXTURE / "log.txt", tmp_path / "log.txt")
    from_log = gvn.summarize_ticks(gvn.tick_rows(tmp_path))
    assert (from_log["ticks"], from_log["sec_per_kimg"], from_log["peak_gpu_gb"]) == (3, 4.2, 5.01)
    (tmp_path / "log.txt").write_text("Loading training set...\n")
    assert gvn.summarize_ticks(gvn.tick_rows(tmp_path))["sec_per_kimg"] is None


def test_our_log_lines_read_too():
    line = ("tick 2     kimg 2.080     time 1m 07s       sec/tick 4.2      sec/kimg 4.10     maintenance 0.1    "
            "cpumem 4.20   gpumem 5.01   augment 0.004")
    assert gvn.log_ticks(line) == [{"tick": 2, "kimg": 2.08, "sec_per_tick": 4.2, "sec_per_kimg": 4.1,
                                    "peak_gpu_gb": 5.01}]


def test_plugin_lines():
    assert gvn.plugin_status((FIXTURE / "log.txt").read_text()) == {"bias_act_plugin": "built",
                                                                     "upfirdn2d_plugin": "built"}
    failed = ('Setting up PyTorch plugin "bias_act_plugin"... Done.\n'
              'Setting up PyTorch plugin "upfirdn2d_plugin"... Failed!\nTraceback (most recent call last):\n')
    assert gvn.plugin_status(failed) == {"bias_act_plugin": "built", "upfirdn2d_plugin": "failed"}
    cut = 'Setting up PyTorch plugin "bias_act_plugin"... '
    assert gvn.plugin_status(cut) == {"bias_act_plugin": "started"}
    full = ('Setting up PyTorch plugin "bias_act_plugin"...\n[1/3] c++ ...\n'
            'Done setting up PyTorch plugin "bias_act_plugin".\nSetting up PyTorch plugin "upfirdn2d_plugin"...\n'
            'Failed!\n')
    assert gvn.plugin_status(full) == {"bias_act_plugin": "built", "upfirdn2d_plugin": "failed"}


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def test_compat_folder_holds_only_what_is_missing(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels / "setuptools-69.5.1-py3-none-any.whl",
           {"pkg_resources/__init__.py": "", "setuptools/__init__.py": "",
            "setuptools/_distutils/__init__.py": "", "setuptools/_distutils/util.py": "def strtobool(v): return 1\n"})
    dest, held = gvn.build_compat(wheels, tmp_path / "compat", ["pkg_resources"])
    assert held == ["pkg_resources"] and sorted(p.name for p in dest.iterdir()) == ["pkg_resources"]
    dest, held = gvn.build_compat(wheels, tmp_path / "compat", ["pkg_resources", "distutils.util"])
    assert held == ["pkg_resources", "distutils"] and (dest / "distutils" / "util.py").is_file()
    assert not (dest / "setuptools").exists()  # the machine's own setuptools is never shadowed
    with pytest.raises(gvn.BenchError, match="has no wheel with requests"):
        gvn.build_compat(wheels, tmp_path / "compat", ["requests"])


@pytest.mark.skipif(not list(gvn.WHEEL_DIR.glob("setuptools-69*.whl")),
                    reason="no setuptools 69 wheel in .whl/ (python3 bench/gpu_vs_nvidia.py --prepare-carry DIR)")
def test_carried_wheel_gives_pkg_resources_and_distutils_without_site(tmp_path):
    dest, _ = gvn.build_compat(gvn.WHEEL_DIR, tmp_path / "compat", ["pkg_resources", "distutils.util"])
    code = ("import distutils.util, pkg_resources; assert distutils.util.strtobool('1');"
            "assert pkg_resources.parse_version('2.11.0') >= pkg_resources.parse_version('1.11.0a');"
            "print(distutils.util.__file__, pkg_resources.__file__)")
    # -S: no site-packages (nothing of this machine's setuptools): the folder alone must do
    proc = subprocess.run([sys.executable, "-S", "-W", "ignore", "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(dest), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(dest / "distutils" / "util.py"), str(dest / "pkg_resources" / "__init__.py")]


def test_prepare_carry_copies_the_checkout_without_git_and_large_files(tmp_path):
    src = tmp_path / "sg3"
    (src / "torch_utils" / "ops").mkdir(parents=True)
    (src / ".git" / "objects").mkdir(parents=True)
    (src / "docs").mkdir()
    (src / "train.py").write_text("print('train')\n")
    (src / "torch_utils" / "ops" / "bias_act.cu").write_text("// kernel\n")
    (src / ".git" / "objects" / "pack").write_bytes(b"x" * 10)
    (src / "docs" / "teaser.png").write_bytes(b"x" * (gvn.MAX_CARRIED_FILE + 1))
    summary = gvn.prepare_carry(src, dest_root=tmp_path / "carry", wheel_dir=tmp_path / "whl", download=False,
                                emoji=False, log=lambda line: None)
    copied = sorted(str(p.relative_to(tmp_path / "carry" / "stylegan3"))
                    for p in (tmp_path / "carry" / "stylegan3").rglob("*") if p.is_file())
    assert copied == ["torch_utils/ops/bias_act.cu", "train.py"]
    assert summary["files"] == 2 and summary["left_out"] == ["docs/teaser.png (200 KB)"]
    assert json.loads((tmp_path / "carry" / "CARRY.json").read_text())["source"] == str(src)
    with pytest.raises(gvn.BenchError, match="not a checkout of NVIDIA's stylegan3"):
        gvn.prepare_carry(tmp_path / "carry", dest_root=tmp_path / "other", download=False, emoji=False)


def test_device_call_fits_and_carries_ignored_folders(capsys):
    assert gvn.main(["--print-run"]) == 0
    call = json.loads(capsys.readouterr().out)
    assert len(call["command"]) <= 2000 and call["timeout_s"] <= 600 and call["carry"] == [".nvidia", ".whl"]
    for path in call["carry"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", path + "/x"], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} must be ignored by git (it is carried, not committed)"
    assert call["command"] in (ROOT / "bench" / "gpu_vs_nvidia.py").read_text()  # the docstring shows it


def test_unknown_variant_is_one_line(capsys):
    assert gvn.main(["--variants", "tf32,turbo", "--device", "cpu", "--out", "unused"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --variants: unknown variant 'turbo'; choose from base, tf32, "
                                               "cl, bf16, workers6, syncs")


def test_tables_and_markdown():
    results = {"environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "python": "3.12.3"},
               "started": "2026-12-05T10:00:00+00:00", "command": "bench/gpu_vs_nvidia.py --nvidia N",
               "nvidia": {"plugins_build": {"seconds": 95.0, "bias_act_plugin": {"built": True},
                                            "upfirdn2d_plugin": {"built": True}}},
               "resolutions": {"64": {"settings": "cfg auto, batch 32",
                                      "ours": {"sec_per_kimg": 2.0, "peak_gpu_gb": 3.0, "ticks": 3,
                                               "gen": {"images_per_s": 6000.0}, "data_wait": 0.012},
                                      "nvidia": {"sec_per_kimg": 3.0, "peak_gpu_gb": 4.5, "ticks": 3,
                                                 "gen": {"images_per_s": 4000.0},
                                                 "plugins": {"bias_act_plugin": "built"}}}},
               "variants": [{"variant": "tf32", "res": 256, "sec_per_kimg": 5.0, "speedup_vs_base": 1.1}],
               "tiny": [{"name": "tiny32-b64", "sec_per_kimg": 1.5, "peak_gpu_gb": 0.4, "data_wait": 0.2}],
               "skipped": ["variant cl at 256 px: 10 s left"]}
    text = gvn.render_tables(results)
    assert "sec/kimg                       2.000       3.000     1.50x" in text
    assert "G_ema images/s                  6000        4000     1.50x" in text
    assert "ours waited for data 1.2% of the timed ticks" in text
    assert "    64     1.500     0.40      20.0%" in text
    assert "skipped: variant cl at 256 px: 10 s left" in text
    md = gvn.render_markdown(results)
    assert md.splitlines()[0].startswith("NVIDIA H200, torch 2.11.0+cu130 (CUDA 13.0), Python 3.12.3, 2026-12-05")
    assert "| 64 | 2.00 | 3.00 | 1.50x | 3.00 | 4.50 | 6000 | 4000 | 1.50x |" in md
    assert "bias_act_plugin built, upfirdn2d_plugin built (95.0 s)" in md


@pytest.mark.slow
def test_torch_compat_lets_a_sampler_pass_its_dataset():
    # NVIDIA's InfiniteSampler calls Sampler.__init__(dataset); newer torch's Sampler has no __init__ of its own
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_vs_nvidia as g, torch.utils.data as d\n"
            "class S(d.Sampler):\n"
            "    def __init__(self, dataset):\n"
            "        super().__init__(dataset)\n"
            "        self.n = len(dataset)\n"
            "    def __iter__(self):\n"
            "        return iter(range(self.n))\n"
            "done = g.nvidia_torch_compat()\n"
            "assert list(S([5, 6, 7])) == [0, 1, 2]\n"
            "assert g.nvidia_torch_compat() == []\n"  # given once
            "print(len(done))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.strip() in ("0", "1")


@pytest.mark.slow
def test_our_side_at_16px_on_the_cpu(tmp_path):
    """The comparison's own path for our trainer (emoji prepared by the engine, the trainer in a child with the
    data wait recorded, stats read back, G_ema timed from the final snapshot), at 16 px on the CPU."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_vs_nvidia.py"), "--device", "cpu", "--res", "16", "--batch",
           "8", "--cbase", "256", "--cmax", "16", "--kimg", "0.032", "--tick", "0.008", "--images", "64",
           "--gen-batch", "4", "--gen-seconds", "0.3", "--variants", "cl", "--variant-res", "16", "--tiny-batches",
           "", "--out", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "gpu_vs_nvidia.json").read_text())
    ours = results["resolutions"]["16"]["ours"]
    assert ours["ticks"] == 3 and ours["sec_per_kimg"] > 0 and ours["kimg"] == pytest.approx(0.032)
    assert ours["options"]["batch_size"] == 8 and ours["options"]["channel_base"] == 256
    assert 0 <= ours["data_wait"] < 1
    assert ours["gen"]["images_per_s"] > 0 and ours["gen"]["generate_images_per_s"] > 0
    assert results["nvidia"]["void"] == "not run (no --nvidia checkout given)"
    # what comes back from a GPU call is at most 8 files: --out holds the results and one archive of the logs
    assert sorted(p.name for p in out.iterdir()) == ["gpu_vs_nvidia-logs.tar.gz", "gpu_vs_nvidia.json",
                                                     "gpu_vs_nvidia.md", "gpu_vs_nvidia.txt"]
    with tarfile.open(out / "gpu_vs_nvidia-logs.tar.gz") as tar:
        names = tar.getnames()
        assert any(n.startswith("logs/") for n in names)
        stats = [json.loads(line) for line in tar.extractfile("kept/ours-16/stats.jsonl").read().splitlines()]
        options = json.loads(tar.extractfile("kept/ours-16-cl/training_options.json").read())
    assert all("Bench/data_wait_sec" in rec for rec in stats)
    assert "16 px: cfg auto, batch 8, cbase 256, cmax 16" in (out / "gpu_vs_nvidia.txt").read_text()
    assert "| 16 |" in (out / "gpu_vs_nvidia.md").read_text()
    # the channels-last variant reached the networks (G and D kwargs) and trained
    (cl,) = results["variants"]
    assert cl["variant"] == "cl" and cl["ticks"] == 3 and not cl.get("error")
    assert cl["options"]["fp16_channels_last"] and not ours["options"]["fp16_channels_last"]
    assert options["D_kwargs"]["block_kwargs"]["fp16_channels_last"] is True


@pytest.mark.slow
@pytest.mark.skipif(not (gvn.CARRY_DIR / "stylegan3" / "train.py").is_file(),
                    reason="NVIDIA's checkout is not in .nvidia/stylegan3 (bench/gpu_vs_nvidia.py --prepare-carry DIR)")
def test_nvidia_dry_run_takes_our_settings(tmp_path):
    """NVIDIA's own train.py --dry-run (its imports, with the carried wheels where this Python lacks them) resolves
    the flags built here to exactly our auto preset's training at 64 px."""
    nvdir = gvn.CARRY_DIR / "stylegan3"
    res = gvn.resolve_nvidia_imports(sys.executable, nvdir, tmp_path, gvn.WHEEL_DIR, lambda line: None)
    assert res["ok"], res
    data = tmp_path / "emoji64.zip"
    prep = subprocess.run([sys.executable, "-m", "engine", "prepare", "--source", "emoji", "--dest", str(data),
                           "--resolution", "64", "--max-images", "8", "--no-progress"], cwd=ROOT, capture_output=True,
                          text=True)
    assert prep.returncode == 0, prep.stderr
    cfg = gvn.our_config("auto", 64, 32)
    argv = gvn.nvidia_train_args(cfg, data, tmp_path / "runs") + ["--dry-run"]
    proc = subprocess.run([sys.executable, str(gvn.THIS), "--nv-child", "train", "--"] + argv, cwd=nvdir,
                          capture_output=True, text=True, env=gvn.nvidia_env(nvdir, res["compat"]), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert gvn.compare_options(gvn.nvidia_dry_run_options(proc.stdout), cfg) == []

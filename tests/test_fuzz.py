"""Fuzzing as tests: mutated copies of every kind of file a user brings, fed to the door that reads it.

Network files (.pt, NVIDIA .pkl, TF-era .pkl, safetensors), prepared datasets (zip, folder, dataset.json), latent
files (projected_w.npz, directions, the latent library) and the dashboard's uploads (network, pictures for a
dataset, a picture to project). tests/fuzzing.py makes the cases and runs them in child processes: each case must
load or be refused with one UserError line naming the file, within a deadline, within a memory limit, and leave
its files as they were. The fast path runs a few hundred cases a class; `-m slow` runs thousands.

A failure names the class and case index; `python tests/fuzzing.py replay CLASS INDEX` writes that case and shows
the full traceback.
"""

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fuzzing

# Cases per class, in two children side by side (two cores), each group about as long as the other: the network
# classes load a network per case (10-20 ms of CPU), the others take a few ms, and the uploads child first builds
# the dashboard (seconds). The fast path stays within about ten seconds of CPU per child.
FAST = [{"pt": 200, "nvidia": 200, "tf": 200},
        {"safetensors": 200, "dataset": 300, "latents": 300, "uploads": 200}]
SLOW = [{"pt": 2000, "nvidia": 2000},
        {"tf": 2000, "safetensors": 2000, "dataset": 3000, "latents": 3000, "uploads": 1000}]
# The slow path starts past the fast path's cases, so that it tries new ones.
SLOW_FIRST = 1000
PEAK_RISE_MB = 150  # resident memory all cases of a child may add, together, to what the loaded program uses


def _scratch():
    # Thousands of small files are written and removed: in memory where the machine has a tmpfs.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="studio-fuzz-", dir=base))


def _run_groups(groups, first):
    """Run each group ({class: count}) in a child of its own, all at once -> ({class: results}, summaries)."""
    scratch = _scratch()
    try:
        def one(k):
            work = scratch / f"child{k}"
            work.mkdir()
            return fuzzing.run_child([[c, first, n] for c, n in groups[k].items()], work)

        with ThreadPoolExecutor(len(groups)) as pool:
            done = list(pool.map(one, range(len(groups))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {c: [] for g in groups for c in g}
    for rs, _ in done:
        for r in rs:
            results[r["cls"]].append(r)
    return results, [summary for _, summary in done]


def _count(groups, cls):
    return next(g[cls] for g in groups if cls in g)


@pytest.fixture(scope="module")
def fast():
    return _run_groups(FAST, 0)


@pytest.fixture(scope="module")
def slow():
    return _run_groups(SLOW, SLOW_FIRST)


def _check(results, summaries, cls, count):
    got = results[cls]
    failures = [r for r in got if r["status"] == "FAIL"]
    lines = [f"{cls} case {r['i']} (seed file {r.get('seed')}, {r.get('desc')}): {r['why']}" for r in failures[:15]]
    assert not failures, (f"{len(failures)} of {len(got)} {cls} cases broke the contract; reproduce one with "
                          f"python tests/fuzzing.py replay {cls} INDEX\n" + "\n".join(lines))
    stderr = "\n".join(s.get("stderr", "")[-1500:] for s in summaries if s.get("returncode"))
    assert len(got) == count, f"{cls}: {len(got)} of {count} cases ran\n{stderr}"
    statuses = {r["status"] for r in got}
    # Both kinds of outcome: the mutations reach past the first check, and the seeds themselves still load.
    assert statuses == {"ok", "refused"}, f"{cls}: outcomes {statuses}"
    slowest = max(got, key=lambda r: r["s"])
    assert slowest["s"] < fuzzing.DEADLINE, slowest


@pytest.mark.parametrize("cls", fuzzing.CLASSES)
def test_mutated_files_load_or_are_refused_in_one_line(fast, cls):
    results, summaries = fast
    _check(results, summaries, cls, _count(FAST, cls))


def test_fuzzed_cases_stay_within_memory(fast):
    _, summaries = fast
    for s in summaries:
        assert s.get("returncode") == 0, s.get("stderr", "")[-2000:]
        assert s["peak_rise_mb"] < PEAK_RISE_MB, s


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first one runs all the cases (a minute or two; more on a busy machine)
@pytest.mark.parametrize("cls", fuzzing.CLASSES)
def test_thousands_of_mutated_files_load_or_are_refused_in_one_line(slow, cls):
    results, summaries = slow
    _check(results, summaries, cls, _count(SLOW, cls))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_thousands_of_fuzzed_cases_stay_within_memory(slow):
    _, summaries = slow
    for s in summaries:
        assert s.get("returncode") == 0, s.get("stderr", "")[-2000:]
        assert s["peak_rise_mb"] < PEAK_RISE_MB, s


# --------------------------------------------------------------------------------------------------------------
# The harness itself


def test_a_case_is_the_same_every_time(tmp_path):
    """Case indices are the only seed: the same index writes the same bytes (a failure can be replayed)."""
    import torch

    torch.manual_seed(123)  # the seeds' own weights must not depend on the state of the caller's generator
    ctx = fuzzing.build_context(["tf", "dataset"], tmp_path)
    for cls in ("tf", "dataset"):
        for index in (3, 17):
            digests = []
            for k in range(2):
                folder = tmp_path / f"{cls}-{index}-{k}"
                folder.mkdir()
                fuzzing.make_case(cls, index, ctx["seeds"][cls], folder)
                digests.append({p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
                                if p.is_file()})
            assert digests[0] == digests[1], (cls, index)


def test_the_harness_sees_each_kind_of_failure(tmp_path):
    """A traceback, a multi-line message, a changed file and a stuck door are each reported as a failure."""
    from engine.errors import UserError

    ctx = fuzzing.build_context(["dataset"], tmp_path)
    seeds = ctx["seeds"]["dataset"]

    def crash(path, seed, ctx):
        raise KeyError("boom")

    def two_lines(path, seed, ctx):
        raise UserError(f"{path} is bad\nsecond line")

    def unnamed(path, seed, ctx):
        raise UserError("something is bad")

    def touches(path, seed, ctx):
        (Path(path).parent / "new-file").write_text("x")
        return "ok"

    def stuck(path, seed, ctx):
        while True:
            pass

    old = fuzzing.DEADLINE
    fuzzing.DEADLINE = 0.5
    try:
        for door, why in ((crash, "KeyError"), (two_lines, "not one line"), (unnamed, "does not name the file"),
                          (touches, "files changed"), (stuck, "deadline")):
            folder = tmp_path / door.__name__
            folder.mkdir()
            r = fuzzing.run_case("dataset", 0, seeds, ctx, folder, door)
            assert r["status"] == "FAIL" and why in r["why"], (door.__name__, r)
    finally:
        fuzzing.DEADLINE = old


# --------------------------------------------------------------------------------------------------------------
# Faults the fuzzing found, each as one hand-made file


def _zip(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(header, data=b"\0" * 64):
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _one_line(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg and "MemoryError" not in msg, msg
    return msg


def test_a_class_label_of_a_trillion_is_refused_not_allocated(tmp_path):
    from engine.data.dataset import ImageDataset
    from engine.errors import UserError

    members = {m[0]: m[1] for m in fuzzing._dataset_members("int", n=2)}
    members["dataset.json"] = '{"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 1000000000000]]}'
    path = _zip(tmp_path / "labels.zip", members)
    with pytest.raises(UserError) as e:
        ImageDataset(path, use_labels=True)
    assert "class label 1000000000000" in _one_line(e, path)


def test_a_zip_record_declaring_gigabytes_is_refused_before_it_is_read(tmp_path):
    from engine.data.dataset import ImageDataset
    from engine.errors import UserError

    members = {m[0]: m[1] for m in fuzzing._dataset_members("int", n=2)}
    path = _zip(tmp_path / "declared.zip", members)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the central directory entry of dataset.json, written last
    data[entry + 20:entry + 24] = (2 ** 31 - 1).to_bytes(4, "little")  # its stored size
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        ImageDataset(path, use_labels=True)
    assert "declares" in _one_line(e, path)


def test_an_npz_declaring_a_trillion_values_is_refused_not_allocated(tmp_path):
    from engine import latents
    from engine.errors import UserError

    G = fuzzing.tiny_networks()[0]
    path = _zip(tmp_path / "projected_w.npz",
                {"w.npy": _npy({"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})})
    with pytest.raises(UserError) as e:
        latents.load_w(path, G)
    assert "declares 4,000,000,000,000 bytes" in _one_line(e, path)


def test_a_lone_npy_or_text_is_not_read_as_an_npz(tmp_path):
    from engine import directions, latents
    from engine.errors import UserError

    G = fuzzing.tiny_networks()[0]
    npy = tmp_path / "w.npz"
    npy.write_bytes(_npy({"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)}))
    with pytest.raises(UserError) as e:
        latents.load_w(npy, G)
    assert "not a zip archive" in _one_line(e, npy)
    text = _zip(tmp_path / "dirs.npz", {"directions.npy": _npy({"descr": "<U4", "fortran_order": False,
                                                                "shape": (3, 4)}, b"\0" * 192)})
    with pytest.raises(UserError) as e:
        directions.load(text, G)
    assert "not numbers" in _one_line(e, text)


def test_a_latent_identity_of_the_wrong_type_is_refused(tmp_path):
    import json

    import numpy as np

    from engine import latents
    from engine.errors import UserError

    G = fuzzing.tiny_networks()[0]
    path = tmp_path / "projected_w.npz"
    np.savez(path, w=np.zeros((1, G.num_ws, G.w_dim), np.float32), network=np.array(json.dumps({"w_dim": "four"})))
    with pytest.raises(UserError) as e:
        latents.load_w(path, G)
    assert "damaged network identity" in _one_line(e, path)


def test_a_pickle_length_of_2_to_the_62_is_not_allocated(tmp_path):
    from engine.checkpoint import load_network
    from engine.errors import UserError

    path = tmp_path / "huge.pkl"
    for opcode in (b"\x8e", b"\x96"):  # BINBYTES8, BYTEARRAY8
        path.write_bytes(b"\x80\x05" + opcode + (1 << 62).to_bytes(8, "little") + b"xx.")
        with pytest.raises(UserError) as e:
            load_network(path)
        _one_line(e, path)

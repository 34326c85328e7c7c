"""engine/runs.py names the run folder's files; engine/fsutil.atomic_path writes them in place."""

import os
import stat

import pytest

from engine import fsutil, runs


def test_run_folders_are_found_by_their_number(tmp_path):
    for name in ("00002-b-tiny", "00000-a-tiny", "notes", "0001-short"):
        (tmp_path / name).mkdir()
    (tmp_path / "00001-file").write_text("not a folder")
    assert [p.name for p in runs.run_dirs(tmp_path)] == ["00000-a-tiny", "00002-b-tiny"]
    assert runs.run_dirs(tmp_path / "missing") == []
    assert runs.run_number("00002-b-tiny") == "00002" and runs.run_number("notes") is None
    assert runs.next_run_dir(tmp_path, "c").name == "00003-c"


def test_network_files_and_run_folder_files(tmp_path):
    assert runs.is_network_file("a/net.PKL") and runs.is_network_file("network-snapshot-000004.pt")
    assert not runs.is_network_file("net.onnx")
    assert not runs.is_run_folder(tmp_path) and not runs.has_status(tmp_path)
    runs.write_options(tmp_path, {"cfg": "tiny"})
    runs.write_status(tmp_path, "running", kimg=1, total_kimg=2, tick=1)
    assert runs.is_run_folder(tmp_path) and runs.has_status(tmp_path)
    assert runs.read_options(tmp_path) == {"cfg": "tiny"} and runs.read_status(tmp_path)["alive"] is True
    assert runs.metric_path(tmp_path, "fid1k").name == "metric-fid1k.jsonl"
    assert runs.log_path(tmp_path).name == "log.txt"
    (tmp_path / runs.OPTIONS_FILE).write_bytes(b"\xff\xfe not json")
    assert runs.read_options(tmp_path) is None


def test_atomic_path_keeps_the_old_file_on_error_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.") and tmp.name.endswith(".tmp")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_writers_replace_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "data.json"
    fsutil.write_json_atomic(target, {"a": 1})
    fsutil.write_text_atomic(target, '{"b": 2}')
    assert target.read_text() == '{"b": 2}' and sorted(p.name for p in target.parent.iterdir()) == ["data.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask

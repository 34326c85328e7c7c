"""The Windows code paths, run here: the stop file (no signal), the run lock without fcntl, the distributed
backend without NCCL, the compiler message, names with drive letters, backslashes, spaces and other scripts, and
no POSIX-only call outside engine/compat.py."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import compat, runs
from engine.errors import UserError
from engine.train import runlock
from polling import wait_for
from train_helpers import make_dataset

ROOT = Path(__file__).resolve().parents[1]


# -- no POSIX-only call without a guard ---------------------------------------------------------------------------

POSIX_ONLY_ATTRS = {
    "os": {"killpg", "getpgid", "setsid", "setpgid", "fork", "forkpty", "pwrite", "pread", "getuid", "geteuid",
           "getgid", "chown", "lchown", "sync", "statvfs", "nice", "getloadavg", "sched_getaffinity", "mkfifo",
           "wait3", "wait4", "WNOHANG"},
    "signal": {"SIGKILL", "SIGALRM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGPIPE", "SIGQUIT", "SIGSTOP",
               "SIGCONT", "alarm", "setitimer", "pause", "pthread_kill", "killpg"},
}
POSIX_ONLY_MODULES = {"fcntl", "resource", "pwd", "grp", "termios", "tty", "pty", "posix"}
POSIX_ONLY_KEYWORDS = {"start_new_session", "preexec_fn"}
# A call guarded right where it is made: `try: ... except AttributeError` around it.
GUARDED_BY_ATTRIBUTE_ERROR = {("engine/data/prepare.py", "sched_getaffinity")}


def posix_only_uses(path: Path, rel: str):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in POSIX_ONLY_ATTRS.get(node.value.id, ()) and (rel, node.attr) not in \
                    GUARDED_BY_ATTRIBUTE_ERROR:
                found.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in POSIX_ONLY_MODULES:
                    found.append(f"{rel}:{node.lineno}: import {name}")
        elif isinstance(node, ast.keyword) and node.arg in POSIX_ONLY_KEYWORDS:
            found.append(f"{rel}:{node.lineno}: {node.arg}=")
    return found


def test_windows_no_posix_only_call_outside_compat():
    files = [p for d in ("engine", "ui") for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]
    found = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "engine/compat.py":
            continue
        found += posix_only_uses(path, rel)
    assert not found, "POSIX-only calls outside engine/compat.py (move them there, behind a check):\n" + \
        "\n".join(found)


def test_windows_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, signal, fcntl\nimport subprocess\nos.killpg(1, signal.SIGKILL)\n"
                   "subprocess.Popen(['x'], start_new_session=True)\nos.pwrite(1, b'', 0)\n")
    found = posix_only_uses(bad, "bad.py")
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted(
        ["import fcntl", "os.killpg", "signal.SIGKILL", "start_new_session=", "os.pwrite"]), found


# -- processes ----------------------------------------------------------------------------------------------------


def test_windows_process_helpers(monkeypatch):
    monkeypatch.setattr(compat, "IS_WINDOWS", True)
    assert compat.detached_popen_kwargs() == {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    me = os.getpid()
    assert compat.pid_alive(me)  # asked through psutil: on Windows signal 0 would end the process
    assert compat.ask_to_stop(me) is False  # no signal on Windows: the stop file asks
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                              "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    compat.kill_tree(child.pid)  # the process tree, through psutil
    assert child.wait(timeout=20) is not None
    wait_for(lambda: not compat.pid_alive(grandchild) or _zombie(grandchild), 20, "the grandchild to end")
    monkeypatch.setattr(compat, "IS_WINDOWS", False)
    assert compat.detached_popen_kwargs() == {"start_new_session": True}


def _zombie(pid):
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_windows_distributed_backend_without_nccl():
    assert compat.distributed_backend("cpu", nccl_available=True) == ("gloo", "")
    assert compat.distributed_backend("cuda", nccl_available=True) == ("nccl", "")
    backend, note = compat.distributed_backend("cuda", nccl_available=False)
    assert backend == "gloo" and "NCCL is not available" in note and "gloo" in note


def test_windows_compiler_is_msvc_and_its_absence_is_one_clear_line(monkeypatch):
    from engine.ops import build

    monkeypatch.setenv("CXX", "cl")
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(build, "_ensure_ninja_on_path", lambda: True)
    with pytest.raises(build.BuildError) as e:
        build._compile("bias_act", "cpu", Path("."), "x", Path("log"))
    assert "'cl' (MSVC) not found" in str(e.value) and "Visual Studio Build Tools" in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(build.sys, "platform", "win32")
    assert build._compiler() == "cl" and build._is_msvc("C:\\BuildTools\\VC\\bin\\cl.exe")


# -- the run lock without fcntl -----------------------------------------------------------------------------------


class _FakeMsvcrt:
    """msvcrt.locking's contract (a byte range from the file position; LK_NBLCK refuses with PermissionError while
    another handle holds it), made of POSIX record locks so the Windows branch runs here."""

    LK_NBLCK, LK_UNLCK = 2, 0

    def locking(self, fd, mode, nbytes):
        import fcntl

        pos = os.lseek(fd, 0, os.SEEK_CUR)
        if mode == self.LK_UNLCK:
            fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, pos)
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, pos)
        except BlockingIOError:
            raise PermissionError(13, "Permission denied") from None


def test_windows_run_lock_with_msvcrt_refuses_a_second_trainer_and_names_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(compat, "fcntl", None)
    monkeypatch.setattr(compat, "msvcrt", _FakeMsvcrt())
    run = tmp_path / "00000-x"
    run.mkdir()
    code = ("import sys; from engine import compat; from test_windows import _FakeMsvcrt; compat.fcntl = None; "
            "compat.msvcrt = _FakeMsvcrt(); from engine.train import runlock; lock = runlock.acquire(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=str(ROOT), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by training process pid {holder.pid}\b"):
            runlock.acquire(run)  # the owner is readable: the lock byte lies past the record
        assert runlock.read_owner(run)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    lock = runlock.acquire(run)  # released by the system when its holder died
    try:
        assert lock.locked and runlock.read_owner(run)["pid"] == os.getpid()
    finally:
        lock.release()


# -- the stop file, end to end with a real trainer ---------------------------------------------------------------


@pytest.mark.slow
def test_windows_stop_file_stops_a_real_trainer_with_a_snapshot(tmp_path, monkeypatch):
    """The dashboard's Stop as on Windows (no signal): the run folder's stop file makes the trainer finish its step,
    write a snapshot and exit 0; an old request does not stop the next session. The workdir has a space and
    letters of other scripts in its name."""
    from ui.supervisor import Supervisor

    work = tmp_path / "Zoë's stüdio Ω"
    data = make_dataset(work / "datasets" / "blobs 猫", n=8, res=8)
    monkeypatch.setattr(compat, "IS_WINDOWS", True)  # Stop sends no SIGTERM; Popen gets Windows' flags
    sup = Supervisor(work)
    opts = {"tick": 0.004, "snap": 1000, "metrics": "none", "batch": 4, "cbase": 256, "cmax": 16, "map": 1}
    rec = sup.start(data, "tiny", 100, opts)
    try:
        run = sup.wait_for_run_dir(rec, timeout=120)
        assert run is not None
        wait_for(lambda: len(runs.read_stats(run)) >= 2, 120, "two ticks")
        sup.stop(run)
        assert (run / runs.STOP_FILE).exists()
        wait_for(lambda: not sup.view(run).live, 120, "the trainer to stop")
        status = runs.read_status(run)
        assert status["state"] == "stopped" and status["message"] == "stop requested"
        assert runs.latest_snapshot(run) is not None and status["snapshot"] == runs.latest_snapshot(run).name
        assert not (run / runs.STOP_FILE).exists()  # followed, then removed
        assert "stop requested: kimg" in runs.log_path(run).read_text(encoding="utf-8")
        kimg_at_stop = status["kimg"]

        # A request left from before the next session (a Stop that came as the run ended) is not for it.
        runs.request_stop(run)
        old = time.time() - 3600
        os.utime(run / runs.STOP_FILE, (old, old))
        rec2 = sup.resume(run)
        wait_for(lambda: (runs.read_status(run) or {}).get("pid") == rec2["pid"]
                 and runs.read_status(run)["kimg"] > kimg_at_stop + 0.004, 120, "the resumed run to train on")
        assert sup.view(run).live and not (run / runs.STOP_FILE).exists()
        # A script stops it the same way, on any platform.
        done = subprocess.run([sys.executable, "-m", "engine", "stop", str(run), "--wait", "120"], cwd=str(ROOT),
                              capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert done.returncode == 0, done.stderr
        assert f"asked run {run.name} to stop" in done.stdout and f"run {run.name}: stopped at kimg" in done.stdout
        wait_for(lambda: not sup.view(run).live, 60, "the trainer to exit")
        again = subprocess.run([sys.executable, "-m", "engine", "stop", str(run)], cwd=str(ROOT), capture_output=True,
                               text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert again.returncode == 2 and again.stderr.strip() == f"error: run {run.name} is not training (state: stopped)"
    finally:
        for r in (rec, locals().get("rec2")):
            if r and compat.pid_alive(r["pid"]):
                compat.kill_tree(r["pid"])
    assert json.loads((run / "training_options.json").read_text(encoding="utf-8"))["data"].endswith("blobs 猫")


# -- names from Windows -------------------------------------------------------------------------------------------


def test_windows_names_with_drive_letters_backslashes_and_reserved_words():
    from ui.common import safe_name

    assert safe_name("C:\\Users\\Zoë\\My Pictures\\cats") == "C-Users-Zoë-My-Pictures-cats"
    assert "\\" not in safe_name("..\\..\\Windows\\System32") and ":" not in safe_name("D:")
    assert safe_name("猫の写真") == "猫の写真" and safe_name("émoji 16") == "émoji-16"
    assert safe_name("nul") == "nul-file" and safe_name("con.zip") == "con-file.zip"
    assert safe_name("trailing dots. . .") == "trailing-dots"


def test_windows_upload_kept_under_a_safe_name(tmp_path):
    from ui.common import Studio

    studio = Studio(tmp_path / "my stüdio")
    src = tmp_path / "Zoë's cat (1).PNG"
    src.write_bytes(b"\x89PNG fake")
    kept = studio.keep_upload(str(src), "images")
    assert kept.parent == studio.uploads_dir / "images" and kept.name == "Zoë-s-cat-1.png"
    assert kept.read_bytes() == src.read_bytes()


def test_windows_replace_waits_for_a_reader_to_let_go(tmp_path, monkeypatch):
    """On Windows a file open in another process cannot be replaced; the atomic writers try again briefly."""
    from engine import fsutil

    monkeypatch.setattr(compat, "IS_WINDOWS", True)
    real = os.replace
    refusals = []

    def busy_twice(src, dst):
        if len(refusals) < 2:
            refusals.append(dst)
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real(src, dst)

    monkeypatch.setattr(compat.os, "replace", busy_twice)
    fsutil.write_json_atomic(tmp_path / "status.json", {"state": "running"})
    assert json.loads((tmp_path / "status.json").read_text()) == {"state": "running"} and len(refusals) == 2
    monkeypatch.setattr(compat, "IS_WINDOWS", False)
    refusals.clear()
    with pytest.raises(PermissionError):
        compat.replace(tmp_path / "a", tmp_path / "b")  # elsewhere a refusal is final at once

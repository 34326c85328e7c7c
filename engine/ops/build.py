"""Just-in-time build of the compiled ops in extensions/ (torch.utils.cpp_extension + ninja).

A build happens once per machine: the result lives under $STUDIO_CACHE/extensions (default
~/.cache/stylegan-studio/extensions) in a folder keyed by the torch version, Python ABI, compiler, CPU (the C++
code is compiled for the host CPU) and, for CUDA, the CUDA version and GPU architecture, with a sub-folder per
source hash. Later processes import the finished library directly, without running the compiler or ninja.

Two processes building at once: a lock file (pid, host, heartbeat) serialises them. A lock whose owner died,
or whose heartbeat stopped, is taken over; a waiter gives up after STUDIO_BUILD_WAIT seconds (default 600),
so a run never hangs on a build. A failed build is remembered in its folder (the next process does not retry a
broken compiler every time) for a day; STUDIO_OPS_REBUILD=1 retries at once.
"""

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from engine.procs import pid_alive

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = ROOT / "extensions"

# Sources of each extension module; headers are hashed into the cache key too.
MODULES = {
    ("bias_act", "cpu"): ["bias_act.cpp"],
    ("upfirdn2d", "cpu"): ["upfirdn2d.cpp"],
    ("bias_act", "cuda"): ["bias_act_cuda.cpp", "bias_act_cuda.cu"],
    ("upfirdn2d", "cuda"): ["upfirdn2d_cuda.cpp", "upfirdn2d_cuda.cu"],
}
HEADERS = ["bias_act_math.h"]

HEARTBEAT_S = 5.0     # the lock owner touches the lock file this often
STALE_S = 60.0        # a lock untouched for this long belongs to a dead or frozen process
FAILURE_RETRY_S = 24 * 3600  # a recorded build failure is retried after a day


class BuildError(Exception):
    """A build that did not produce a module; str() is one line saying why."""


def cache_root():
    base = os.environ.get("STUDIO_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "stylegan-studio"
    return root / "extensions"


def _short(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compiler():
    return os.environ.get("CXX") or ("cl" if sys.platform == "win32" else "c++")


def _is_msvc(cxx):
    return str(cxx).replace("\\", "/").rsplit("/", 1)[-1].lower() in ("cl", "cl.exe")


def _missing_compiler(cxx):
    """What to do when the C++ compiler is not found, for this platform."""
    if _is_msvc(cxx):
        return (f"no C++ compiler: {cxx!r} (MSVC) not found; install the Visual Studio Build Tools (Desktop "
                f"development with C++) and start from the 'x64 Native Tools Command Prompt', or set CXX")
    return f"no C++ compiler: {cxx!r} not found (set CXX or install g++/clang++)"


def _compiler_id():
    cxx = _compiler()
    try:
        # MSVC's cl has no --version: run alone, it prints its version banner (to stderr).
        out = subprocess.run([cxx] if _is_msvc(cxx) else [cxx, "--version"], capture_output=True, text=True,
                             timeout=20)
        first = (out.stdout or out.stderr).strip().splitlines()
        return f"{cxx}: {first[0] if first else 'exit ' + str(out.returncode)}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cxx}: unavailable ({type(e).__name__})"


def _cpu_id():
    """Model and instruction-set flags: the CPU code is built with -march=native."""
    text = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break  # the first processor describes them all
    except OSError:
        pass
    return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _cuda_id():
    import torch

    caps = sorted({"%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return f"cuda{torch.version.cuda}-sm{'_'.join(caps)}"


def _flags(device):
    if sys.platform == "win32":
        return {"extra_cflags": ["/O2", "/openmp"], "extra_ldflags": []}
    cflags = ["-O3", "-fopenmp", "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native"]
    flags = {"extra_cflags": cflags, "extra_ldflags": ["-fopenmp"]}
    if device == "cuda":
        flags["extra_cuda_cflags"] = ["-O3"]
    return flags


def _machine_key(device):
    import torch

    parts = [f"torch{torch.__version__}", sys.implementation.cache_tag, _cpu_id()]
    if device == "cuda":
        parts.append(_cuda_id())
    compiler = _compiler_id()
    digest = hashlib.sha256("|".join(parts + [compiler]).encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts + [digest]))


def _source_hash(name, device):
    h = hashlib.sha256()
    for rel in MODULES[(name, device)] + HEADERS:
        h.update(rel.encode())
        h.update((SOURCE_DIR / rel).read_bytes())
    h.update(json.dumps(_flags(device), sort_keys=True).encode())
    return h.hexdigest()[:12]


def module_name(name, device):
    return f"studio_{name}_{device}"


def build_dir(name, device):
    return cache_root() / _machine_key(device) / f"{name}-{_source_hash(name, device)}"


def _library_path(folder, modname):
    for suffix in (".so", ".pyd", ".dll"):
        p = folder / (modname + suffix)
        if p.exists():
            return p
    return None


def is_built(name, device):
    """True when a finished build for this machine exists on disk (cheap: no compiler is run)."""
    try:
        folder = build_dir(name, device)
    except Exception:
        return False
    return (folder / "built.ok").exists() and _library_path(folder, module_name(name, device)) is not None


def _import(path, modname):
    """Load the library; its ops register under torch.ops.<modname> (TORCH_LIBRARY, no pybind)."""
    import torch

    if modname not in _loaded:
        torch.ops.load_library(str(path))
        _loaded.add(modname)
    return getattr(torch.ops, modname)


_loaded = set()


# ----------------------------------------------------------------------------------------------- the lock


class BuildLock:
    """Exclusive lock file with a heartbeat; stale locks (dead owner or no heartbeat) are taken over."""

    def __init__(self, path, wait_s, stale_s=STALE_S, heartbeat_s=HEARTBEAT_S):
        self.path = Path(path)
        self.wait_s, self.stale_s, self.heartbeat_s = wait_s, stale_s, heartbeat_s
        self._stop = threading.Event()
        self._thread = None
        self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}"

    def _stale(self):
        """The lock's content when it is stale, else None."""
        try:
            age = time.time() - self.path.stat().st_mtime
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        try:
            info = json.loads(text or "{}")
        except ValueError:
            info = {}  # half written, or not ours: judged by age alone
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                and not pid_alive(info["pid"]):
            return info
        return info if age > self.stale_s else None

    def _take_over(self, stale):
        # Rename first, so of several waiters seeing the same stale lock only one removes it.
        grave = self.path.with_name(self.path.name + f".stale-{os.getpid()}")
        try:
            os.replace(self.path, grave)
        except OSError:
            return
        try:
            now = json.loads(grave.read_text() or "{}")
        except (OSError, ValueError):
            now = {}
        if now.get("token") and stale.get("token") and now["token"] != stale["token"]:
            # Someone took the lock between our look and the rename: give it back.
            with contextlib.suppress(OSError):
                os.link(grave, self.path)
        with contextlib.suppress(OSError):
            grave.unlink()

    def acquire(self):
        """True once held; False after wait_s seconds of a live owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                stale = self._stale()
                if stale is not None:
                    self._take_over(stale)
                    continue
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                           "token": self._token}, fh)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            info = json.loads(self.path.read_text() or "{}")
            if info.get("token") == self._token:
                self.path.unlink()


# ---------------------------------------------------------------------------------------------- the build

def _reason(text, log_path):
    """The first compiler error of a build log, as one short phrase."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in lines:  # gcc/clang/nvcc "file:line:col: error: ...", MSVC "error C2065: ..."
        if re.search(r"(fatal error|error)( C\d+)?:", ln) and "Error building extension" not in ln:
            return f"{_short(ln)} (log: {log_path})"
    if "ninja: build stopped" in str(text) or "Error building" in str(text):
        return f"the compiler {_compiler()!r} failed (log: {log_path})"
    return f"{_short(lines[-1] if lines else text)} (log: {log_path})"


def _ensure_ninja_on_path():
    # pip's ninja sits beside the interpreter (or in the ninja package), which is not always on PATH.
    import torch.utils.cpp_extension as cpp

    if cpp.is_ninja_available():
        return True
    extra = [os.path.dirname(sys.executable)]
    try:
        import ninja

        extra.append(getattr(ninja, "BIN_DIR", os.path.join(os.path.dirname(ninja.__file__), "data", "bin")))
    except ImportError:
        pass
    os.environ["PATH"] = os.pathsep.join(extra + [os.environ.get("PATH", "")])
    return cpp.is_ninja_available()


def _compile(name, device, folder, modname, log_path):
    import torch
    import torch.utils.cpp_extension as cpp

    if not _ensure_ninja_on_path():
        raise BuildError("ninja is not installed (pip install ninja)")
    cxx = _compiler()
    if shutil.which(cxx) is None:
        raise BuildError(_missing_compiler(cxx))
    if not _is_msvc(cxx):
        try:
            rc = subprocess.run([cxx, "--version"], capture_output=True, timeout=20).returncode
        except (OSError, subprocess.SubprocessError) as e:
            rc = type(e).__name__
        if rc != 0:
            raise BuildError(f"the C++ compiler {cxx!r} does not work ('{cxx} --version' gave {rc})")
    if device == "cuda" and cpp.CUDA_HOME is None:
        raise BuildError("the CUDA toolkit (nvcc) was not found; set CUDA_HOME")
    with contextlib.suppress(OSError):
        (folder / "lock").unlink()  # torch's own build lock; a leftover one would make load() wait forever
    env_backup = {k: os.environ.get(k) for k in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST")}
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    if device == "cuda" and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(caps)
    sources = [str(SOURCE_DIR / s) for s in MODULES[(name, device)]]
    captured = io.StringIO()
    logger = logging.getLogger("torch.utils.cpp_extension")
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            warnings.simplefilter("always")
            cpp.load(name=modname, sources=sources, build_directory=str(folder), verbose=False,
                     with_cuda=(device == "cuda"), extra_include_paths=[str(SOURCE_DIR)],
                     is_python_module=False, **_flags(device))
        notes = [str(w.message) for w in caught]
        log_path.write_text(captured.getvalue() + "\n".join(notes) + "\nbuild finished\n")
        _loaded.add(modname)
        return getattr(torch.ops, modname)
    except Exception as e:  # the build log says what went wrong; the caller turns this into one line
        text = f"{type(e).__name__}: {e}"
        log_path.write_text(captured.getvalue() + "\n" + text + "\n")
        raise BuildError(_reason(text, log_path)) from None
    finally:
        logger.setLevel(old_level)
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load(name, device):
    """The extension module for op `name` on `device` ('cpu' | 'cuda'), building it if needed.

    Raises BuildError (one-line message) when it cannot be had.
    """
    if (name, device) not in MODULES:
        raise BuildError(f"no {device} kernel for {name}")
    modname = module_name(name, device)
    try:
        folder = build_dir(name, device)
    except Exception as e:
        raise BuildError(f"cannot identify this machine's build environment: {_short(e)}") from None
    done, failed, log_path = folder / "built.ok", folder / "failed.txt", folder / "build.log"
    rebuild = os.environ.get("STUDIO_OPS_REBUILD", "") not in ("", "0")

    def finished():
        lib = _library_path(folder, modname)
        return lib if done.exists() and lib is not None else None

    lib = finished()
    if lib is not None and not rebuild:
        return _import(lib, modname)
    if failed.exists() and time.time() - failed.stat().st_mtime > FAILURE_RETRY_S:
        with contextlib.suppress(OSError):
            failed.unlink()  # old enough that the cause (disk full, a killed compiler) may be gone
    if failed.exists() and not rebuild:
        raise BuildError(failed.read_text().strip() + " [earlier build; STUDIO_OPS_REBUILD=1 retries]")

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create the build folder {folder}: {e.strerror}") from None
    wait_s = float(os.environ.get("STUDIO_BUILD_WAIT", "600"))
    lock = BuildLock(folder / "studio.lock", wait_s=wait_s)
    if not lock.acquire():
        raise BuildError(f"another process has been building in {folder} for over {wait_s:.0f} s")
    try:
        lib = finished()  # built by the process we waited for
        if lib is not None and not rebuild:
            return _import(lib, modname)
        if failed.exists() and not rebuild:
            raise BuildError(failed.read_text().strip())
        for stamp in (done, failed):
            with contextlib.suppress(OSError):
                stamp.unlink()
        try:
            module = _compile(name, device, folder, modname, log_path)
        except BuildError as e:
            failed.write_text(str(e) + "\n")
            raise
        done.write_text(json.dumps({"time": time.time(), "module": modname, "key": folder.parent.name}) + "\n")
        return module
    finally:
        lock.release()

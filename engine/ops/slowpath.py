"""A training on the slow path: an op that should run a compiled kernel runs the plain-torch reference instead.

That happens when the kernel cannot be built (no compiler, no nvcc, a compiler error), when it failed its check
against the reference (verify.py), or when STUDIO_OPS=ref asks for it. The run goes on, correct but slower, and
the user should know by how much. One line per training process says it, in the console and log.txt (the loop
logs dispatch.training_lines(), which ends with it), and the dashboard shows the same line on the Train tab
(read back from log.txt by lines_in_log) and on the System tab:

    slow path: bias_act, upfirdn2d: reference path (the CUDA toolkit (nvcc) was not found; set CUDA_HOME) - ...

The CPU policy that leaves some calls, or whole ops, to the reference because the reference is faster there
(dispatch.CPU_KERNEL and friends) is not a slow path and says nothing here.

The cost comes from slow_cost.json beside this file: measured ratios of a training step's time on the reference
to its time with the compiled kernels, per device kind (a GPU by its name; the CPU). Where this device has no
figure the line says that the cost is not measured yet; `bash bench/gpu_round.sh slowcost` measures it on a GPU
and writes the table with the new figure merged in (copy it over slow_cost.json), or
`python -m engine.ops.slowpath add ...` adds one by hand.

    lines(rows, device, device_name=None, dtypes=None)  # the op_status() rows -> [] or [one line]
    lines_in_log(path)                                   # the slow-path lines of a run's newest session
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

PREFIX = "slow path: "
COST_FILE = Path(__file__).with_name("slow_cost.json")
MEASURE_COMMAND = "bash bench/gpu_round.sh slowcost"

# op_status() causes that make a training slower than it should be ("policy": the CPU's deliberate choice is not)
SLOW_CAUSES = ("mode", "build", "check")


# ------------------------------------------------------------------------------------------------ the dtypes

def training_dtypes(device, precision=None):
    """The dtypes the ops of a training on `device` run in: float32, plus float16 / bfloat16 for --precision
    fp16 / bf16 on CUDA; precision None on CUDA: all three (what some training there may use)."""
    if device != "cuda":
        return ["float32"]
    if precision is None:
        return ["float32", "float16", "bfloat16"]
    return ["float32"] + {"fp16": ["float16"], "bf16": ["bfloat16"]}.get(precision, [])


# ---------------------------------------------------------------------------------------------- the cost table

def read_table(path=None):
    """The cost table: {"entries": [{"device", "name", "ops", "ratio", "what", "command", "date", ...}]}.
    A missing or damaged file reads as an empty table (the line then says the cost is not measured)."""
    try:
        data = json.loads(Path(path or COST_FILE).read_text())
    except (OSError, ValueError):
        return {"entries": []}
    entries = data.get("entries") if isinstance(data, dict) else None
    good = [e for e in entries or [] if isinstance(e, dict) and e.get("device") in ("cpu", "cuda")
            and isinstance(e.get("ratio"), (int, float)) and e["ratio"] > 0]
    return dict(data, entries=good)


def _ratio(r):
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x"


def _matches(entry, device, device_name):
    if entry["device"] != device:
        return False
    name = str(entry.get("name") or "")
    if device == "cpu":
        return True  # one figure stands for CPUs in general; the entry says which one it was measured on
    return bool(name) and bool(device_name) and name.strip().lower() == str(device_name).strip().lower()


def cost_phrase(device, device_name, ops, table=None, partial=False, kernel_ops=None):
    """How much slower a training step is with `ops` (op names) on the reference, from the measured table.
    partial: only some of the ops' dtypes are on the reference (a figure for whole ops is then an upper bound).
    kernel_ops: every op that has a kernel (default: those the build knows)."""
    if kernel_ops is None:
        from engine.ops.build import MODULES

        kernel_ops = {op for op, _ in MODULES}
    table = read_table() if table is None else table
    entries = [e for e in table["entries"] if _matches(e, device, device_name)]
    every_op = set(ops) >= set(kernel_ops)
    want = "all" if every_op else "+".join(sorted(ops))
    exact = [e for e in entries if e.get("ops", "all") == want]
    whole = [e for e in entries if e.get("ops", "all") == "all"]
    if exact or whole:
        e = (exact or whole)[-1]  # the newest figure of its kind (a new one replaces or follows the old)
        where = e.get("what") or "a training step"
        src = f"; {e['source']}" if e.get("source") else ""
        bound = "" if exact and not partial else ", less with fewer ops on it"
        if float(e["ratio"]) < 1.05:
            return f"no slower per step than the compiled kernels within the measurement (measured: {where}{src})"
        return (f"about {_ratio(float(e['ratio']))} slower per step with "
                f"{'every kernel op' if not exact or every_op else 'these ops'} on the reference{bound} "
                f"(measured: {where}{src})")
    if device == "cuda":
        others = [e for e in table["entries"] if e["device"] == "cuda" and e.get("ops", "all") == "all"]
        other = (f"; on {others[-1].get('name')} it was about {_ratio(float(others[-1]['ratio']))} slower per "
                 f"step" if others else "")
        gpu = f" ({device_name})" if device_name else ""
        return f"the cost on this GPU{gpu} is not measured yet ({MEASURE_COMMAND} measures it){other}"
    return f"the cost on this CPU is not measured yet ({MEASURE_COMMAND} --cpu measures it)"


# --------------------------------------------------------------------------------------------------- the line

def _reason(row):
    return str(row.get("reason") or row.get("detail") or "reason unknown")


def slow_rows(rows, dtypes=None):
    """The rows of op_status() whose op runs on the reference although a kernel should run."""
    return [r for r in rows if r.get("cause") in SLOW_CAUSES and (dtypes is None or r["dtype"] in dtypes)]


def lines(rows, device, device_name=None, dtypes=None, table=None):
    """[] when nothing runs slower than it should; else [one line] naming each op on the reference path (the
    dtypes when not all of `dtypes` are), why, and the measured cost. rows: dispatch.op_status(device) or rows
    of that form ({"op", "device", "dtype", "cause", "reason"}); device: "cpu" | "cuda"; device_name: the GPU's
    name (torch.cuda.get_device_name) to find its measured cost."""
    dtypes = list(dtypes) if dtypes is not None else training_dtypes(device)
    slow = slow_rows([r for r in rows if r.get("device", device) == device], dtypes)
    if not slow:
        return []
    by_op = {}
    for r in slow:
        by_op.setdefault(r["op"], []).append(r)
    # "op" alone when every dtype the training uses is slow for the same reason, else "op dtype, dtype"
    groups = {}  # reason -> [label, ...]
    partial = False
    for op, rs in by_op.items():
        reasons = {}
        for r in rs:
            reasons.setdefault(_reason(r), []).append(r["dtype"])
        for why, dts in reasons.items():
            whole = len(reasons) == 1 and sorted(dts) == sorted(dtypes)
            partial = partial or not whole
            groups.setdefault(why, []).append(op if whole else f"{op} {', '.join(dts)}")
    parts = [f"{(' and ' if any(' ' in x for x in labels) else ', ').join(labels)}: reference path ({why})"
             for why, labels in groups.items()]
    cost = cost_phrase(device, device_name, list(by_op), table, partial)
    return [f"{PREFIX}{'; '.join(parts)} - {cost}"]


def device_name(device):
    """The name the cost table knows this device by (the GPU's name; None for the CPU or an unknown GPU)."""
    if device != "cuda":
        return None
    try:
        import torch

        return torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ reading a log back

class _LogState:
    __slots__ = ("ino", "offset", "seen", "rest", "last_kind", "found", "used")

    def __init__(self, ino):
        self.ino, self.offset, self.seen, self.rest = ino, 0, b"", b""
        self.last_kind, self.found, self.used = "", [], 0.0


def _read(path, start, count):
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(count)


_logs = {}
_logs_lock = threading.Lock()
_MAX_LOGS = 64


def _kind(line):
    if line.startswith("ops: "):
        return "ops"
    if line.startswith(PREFIX):
        return "slow"
    return "other"


def lines_in_log(path):
    """The slow-path lines of the newest training session in log.txt `path` ([] when it has none).

    Each session of a run (a new run, each continuation) writes its block of `ops: ` lines, then its slow-path
    line if any; a new block starts a new session. The file only grows while a run goes on, so each call reads
    only what was appended since the last one (a file that shrank, was replaced or rewritten is read again)."""
    path = str(path)
    try:
        st = os.stat(path)
    except OSError:
        return []
    ino = (st.st_dev, st.st_ino)
    with _logs_lock:
        s = _logs.get(path)
        try:
            if s is not None and s.ino == ino and st.st_size >= s.offset and s.seen:
                if _read(path, s.offset - len(s.seen), len(s.seen)) != s.seen:
                    s = None  # rewritten in place: what was read is not there any more
            if s is None or s.ino != ino or st.st_size < s.offset:
                s = _logs[path] = _LogState(ino)
            s.used = time.monotonic()
            data = _read(path, s.offset, st.st_size - s.offset) if st.st_size > s.offset else b""
        except OSError:
            return list(s.found) if s is not None else []
        if data:
            s.offset += len(data)
            s.seen = (s.seen + data)[-64:]
            chunks = (s.rest + data).split(b"\n")
            s.rest = chunks.pop()  # an unfinished last line waits for its end
            for raw in chunks:
                line = raw.decode("utf-8", errors="replace").rstrip("\r")
                line = line.rsplit("\r", 1)[-1]  # a progress bar's rewrites: what the terminal would show
                kind = _kind(line)
                if kind == "ops" and s.last_kind not in ("ops", "slow"):
                    s.found = []  # a new session's block
                if kind == "slow":
                    s.found.append(line)
                s.last_kind = kind
        if len(_logs) > _MAX_LOGS:
            for old in sorted(_logs, key=lambda k: _logs[k].used)[: len(_logs) - _MAX_LOGS]:
                del _logs[old]
        return list(s.found)


# ------------------------------------------------------------------------------------------- updating the table

def add_entry(table, entry):
    """The table with `entry` appended (an older entry for the same device, name and ops is replaced)."""
    key = (entry["device"], str(entry.get("name") or "").lower(), entry.get("ops", "all"))
    kept = [e for e in table.get("entries", [])
            if (e["device"], str(e.get("name") or "").lower(), e.get("ops", "all")) != key]
    return dict(table, entries=kept + [entry])


def write_table(table, path=None):
    text = json.dumps(table, indent=2) + "\n"
    Path(path or COST_FILE).write_text(text)


def main(argv=None):
    """python -m engine.ops.slowpath show | add --device cuda --name "NVIDIA H200" --ratio 2.4 --what "..."
    [--command "..."] [--source "..."] [--ops all] [--table FILE]"""
    import argparse
    import datetime

    ap = argparse.ArgumentParser(prog="python -m engine.ops.slowpath",
                                 description="Show or extend the measured cost of the reference path "
                                             f"({COST_FILE.name}).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show", help="print the table")
    a = sub.add_parser("add", help="add (or replace) one measured figure")
    a.add_argument("--device", choices=["cpu", "cuda"], required=True)
    a.add_argument("--name", default="", help="the GPU's name as torch.cuda.get_device_name gives it")
    a.add_argument("--ops", default="all", help="'all', or the ops on the reference joined by '+'")
    a.add_argument("--ratio", type=float, required=True, help="reference step time / compiled step time")
    a.add_argument("--what", required=True, help="what was measured, on what, with which torch")
    a.add_argument("--command", default="")
    a.add_argument("--source", default="")
    ap.add_argument("--table", default=str(COST_FILE), help=f"the table file (default {COST_FILE})")
    args = ap.parse_args(argv)
    table = read_table(args.table)
    if args.cmd == "show":
        for e in table["entries"]:
            print(f"{e['device']:5} {e.get('name') or '(any)':24} {e.get('ops', 'all'):18} {_ratio(e['ratio']):>6}  "
                  f"{e.get('what', '')}")
        return 0
    if not (args.ratio > 0 and args.ratio < 1000):
        print(f"error: --ratio {args.ratio} is not a plausible ratio of step times", file=sys.stderr)
        return 2
    if args.device == "cuda" and not args.name.strip():
        print("error: a CUDA figure needs --name, the GPU's name (torch.cuda.get_device_name)", file=sys.stderr)
        return 2
    entry = {"device": args.device, "name": args.name.strip(), "ops": args.ops, "ratio": round(args.ratio, 3),
             "what": args.what, "command": args.command, "source": args.source,
             "date": datetime.date.today().isoformat()}
    write_table(add_entry(table, entry), args.table)
    print(f"added to {args.table}: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

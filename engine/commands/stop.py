"""python -m engine stop RUN_FOLDER [--wait S]: ask the trainer of a run to stop after its step, with a snapshot.

Works on every platform (the run folder's stop file; no signal), so a script can do what the dashboard's Stop does.
"""

import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("run", metavar="RUN_FOLDER", help="the run folder whose training should stop")
    p.add_argument("--wait", type=float, default=0, metavar="S",
                   help="wait up to S seconds for the trainer to write its snapshot and exit (default: do not wait)")


def run(args):
    from engine import runs
    from engine.errors import UserError
    from engine.procs import pid_alive

    folder = Path(args.run).expanduser()
    if not runs.is_run_folder(folder):
        raise UserError(f"{args.run} is not a run folder (it has no {runs.OPTIONS_FILE})")
    status = runs.read_status(folder) or {}
    if status.get("state") != "running" or not pid_alive(status.get("pid")):
        raise UserError(f"run {folder.name} is not training (state: {status.get('state', 'unknown')})")
    try:
        runs.request_stop(folder, who="python -m engine stop")
    except OSError as e:
        raise UserError(f"cannot write the stop request into {folder}: {e.strerror or e}") from None
    print(f"asked run {folder.name} to stop after its step (pid {status.get('pid')})", flush=True)
    deadline = time.monotonic() + max(0.0, float(args.wait or 0))
    while time.monotonic() < deadline:
        status = runs.read_status(folder) or {}
        if status.get("state") != "running" or not pid_alive(status.get("pid")):
            print(f"run {folder.name}: {status.get('state')} at kimg {float(status.get('kimg') or 0):.3f}, "
                  f"snapshot {status.get('snapshot')}", flush=True)
            return 0
        time.sleep(0.5)
    if args.wait:
        raise UserError(f"run {folder.name} has not stopped within {args.wait:g} s; it stops after its current "
                        f"step and snapshot")
    return 0

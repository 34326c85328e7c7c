"""System tab: devices and memory, versions, which path each op takes, the workdir and its free disk."""

from __future__ import annotations

import platform
import shutil

import gradio as gr
import psutil

from ui.common import Studio
from ui.supervisor import Supervisor


def _gb(n) -> str:
    return f"{n / 2**30:.1f} GB"


def system_markdown(studio: Studio, sup: Supervisor) -> str:
    import torch

    lines = ["### Devices"]
    vm = psutil.virtual_memory()
    lines.append(f"- **CPU**: {platform.processor() or platform.machine()}, {psutil.cpu_count(logical=True)} "
                 f"threads (torch uses {torch.get_num_threads()}); memory {_gb(vm.available)} free of "
                 f"{_gb(vm.total)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            try:
                free, total = torch.cuda.mem_get_info(i)
                mem = f"{_gb(free)} free of {_gb(total)}"
            except Exception:
                mem = f"{_gb(props.total_memory)}"
            lines.append(f"- **GPU {i}**: {props.name}, compute capability {props.major}.{props.minor}, {mem}")
    else:
        lines.append("- **GPU**: none found — training and generation run on the CPU (small presets only)")
    lines.append("\n### Versions")
    cuda = torch.version.cuda or "none (CPU build)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines.append(f"- Python {platform.python_version()}, torch {torch.__version__}, CUDA {cuda}"
                 + (f", cuDNN {cudnn}" if cudnn else "") + f", gradio {gr.__version__}")
    lines.append("\n### Ops")
    try:
        from engine.ops.dispatch import op_paths

        for op, path in op_paths().items():
            lines.append(f"- `{op}`: {path}")
        from engine.ops.dispatch import op_status

        lines.append("\n### Compiled kernels, per device and dtype")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        rows = {dev: op_status(dev) for dev in devices}
        for row in (r for dev in devices for r in rows[dev]):
            lines.append(f"- `{row['op']}` {row['device']} {row['dtype']}: {row['detail']}")
        lines.append("\n### Slow paths")
        lines.extend(slow_path_items(rows, sup.runs()))
    except Exception as e:  # the page still shows everything else
        lines.append(f"- could not ask the ops: {type(e).__name__}: {e}")
    lines.append("\n### Studio folder")
    du = shutil.disk_usage(studio.workdir)
    where = "(hidden on a shared dashboard)" if studio.shared else f"`{studio.workdir}`"
    lines.append(f"- {where}: {_gb(du.free)} free of {_gb(du.total)}")
    n_ds = sum(1 for p in studio.datasets_dir.iterdir() if p.suffix == ".zip" or p.is_dir())
    runs = sup.runs()
    live = [v.name for v in runs if v.live]
    lines.append(f"- {n_ds} dataset(s), {len(runs)} run(s)" + (f"; training now: {', '.join(live)}" if live else ""))
    lines.append(f"- uploads limited to {studio.max_upload_mb} MB; "
                 + ("shared: server folders are not readable from the page" if studio.shared
                    else "local: served to this machine only unless --host says otherwise"))
    return "\n".join(lines)


def slow_path_items(rows: dict, runs: list) -> list[str]:
    """Markdown items: per device, the line a training there would start with when an op runs on the reference
    although a kernel should (a failed build or check, STUDIO_OPS=ref), with the measured cost; then the line of
    each live training that has one (its log.txt). rows: {device: dispatch.op_status(device)}."""
    from engine import runs as run_files
    from engine.ops import slowpath

    items = []
    for dev, dev_rows in rows.items():
        for line in slowpath.lines(dev_rows, dev, slowpath.device_name(dev)):
            items.append(f"- {dev}: {line}")
    for v in runs:
        if v.live and v.run_dir is not None:
            for line in slowpath.lines_in_log(run_files.log_path(v.run_dir)):
                items.append(f"- training now, {v.name}: {line}")
    return items or ["- none: every op a training uses runs its compiled kernel where one is wanted (or has not "
                     "been built and checked yet: that happens when a training first needs it)"]


def build(studio: Studio, sup: Supervisor):
    md = gr.Markdown(system_markdown(studio, sup), elem_id="system-info")
    btn = gr.Button("Refresh", size="sm", elem_id="system-refresh")
    btn.click(lambda: system_markdown(studio, sup), None, md, api_name="system")
    return {"markdown": md, "refresh": lambda: system_markdown(studio, sup)}

"""python -m engine info: versions, devices and which path each op takes (reference torch or compiled)."""


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--check", action="store_true",
                        help="build the compiled ops and check them against the reference now (once per machine)")


def collect(check=False):
    """{'python', 'torch', 'numpy', 'cuda', 'threads', 'devices': [...], 'ops': {op: path},
    'op_checks': [{'op', 'device', 'dtype', 'state', 'detail'}, ...]} (state: verified | failed | unchecked |
    reference). check=True builds and checks the kernels first instead of reporting what earlier runs found."""
    import platform

    import numpy
    import torch

    from engine.ops import dispatch

    devices = [{"name": "cpu", "description": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"name": f"cuda:{i}", "description": props.name,
                            "memory_gb": round(props.total_memory / 2 ** 30, 1),
                            "capability": f"{props.major}.{props.minor}"})
    op_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if check:
        for dev in op_devices:
            dispatch.verify_now(dev)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "devices": devices,
        "ops": dict(dispatch.op_paths()),
        "op_checks": [row for dev in op_devices for row in dispatch.op_status(dev)],
    }


def run(args):
    import json

    info = collect(check=getattr(args, "check", False))
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"python  {info['python']}")
    print(f"torch   {info['torch']}  (CUDA {info['cuda'] or 'not available'})")
    print(f"numpy   {info['numpy']}")
    print("devices")
    for d in info["devices"]:
        extra = f", {d['memory_gb']} GiB, compute {d['capability']}" if "memory_gb" in d else \
            f", {d['threads']} threads"
        print(f"  {d['name']:<8} {d['description']}{extra}")
    print("ops")
    for name, path in info["ops"].items():
        print(f"  {name:<16} {path}")
    print("compiled kernels, per device and dtype (checked against the reference on first use)")
    for r in info["op_checks"]:
        print(f"  {r['op']:<10} {r['device']:<5} {r['dtype']:<9} {r['detail']}")
    return 0

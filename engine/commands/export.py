"""python -m engine export --network N --format onnx|torchscript|safetensors --out FILE: G_ema for other programs.

The export is run beside the PyTorch network before it is kept; the largest absolute difference is printed.
File layouts: engine/export.py and docs/FORMATS.md.
"""


# engine.export.FORMATS, written out so that parsing the command line does not import torch
FORMATS = ("safetensors", "torchscript", "onnx")


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH",
                        help="network: our .pt snapshot/export, a safetensors export or NVIDIA's .pkl")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="safetensors (weights + .json of constructor arguments), torchscript or onnx")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file (safetensors: NAME.safetensors, with NAME.json beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def run(args):
    from engine.export import export

    export(args.network, args.format, args.out, overwrite=args.overwrite)
    return 0

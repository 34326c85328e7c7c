"""python -m engine export --network N --format onnx|torchscript|safetensors|nvidia-pkl --out FILE: a network for
other programs.

The export is run beside the network before it is kept; the largest absolute difference is printed.
File layouts: engine/export.py and docs/FORMATS.md.
"""


# engine.export.FORMATS, written out so that parsing the command line does not import torch
FORMATS = ("safetensors", "torchscript", "onnx", "nvidia-pkl")


def add_arguments(parser):
    parser.add_argument("--network", required=True, metavar="PATH",
                        help="network: our .pt snapshot/export, a safetensors export or NVIDIA's .pkl")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="safetensors (weights + .json of constructor arguments), torchscript or onnx (G_ema); "
                             "nvidia-pkl (G, D and G_ema as NVIDIA's TF-era pickle, which NVIDIA's "
                             "stylegan2-ada-pytorch and stylegan3 load)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file (safetensors: NAME.safetensors, with NAME.json beside it; nvidia-pkl: "
                             "NAME.pkl)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    parser.add_argument("--untrained-d", action="store_true",
                        help="nvidia-pkl of a network without D (G_ema only: an export, the demo): write a newly "
                             "initialised D, which NVIDIA's loader needs (images are unaffected; its scores mean "
                             "nothing)")


def run(args):
    from engine.export import export

    export(args.network, args.format, args.out, overwrite=args.overwrite, untrained_d=args.untrained_d)
    return 0

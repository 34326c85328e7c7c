"""python -m engine {prepare,train,generate,video,mix,metrics,copies,info,export,blend,project,directions,edit,latents,
stop}:
parse, call, exit.

Each sub-command lives in engine/commands/<name>.py with two functions:
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int | None   (None means 0)
"""

import argparse
import importlib
import os
import sys

COMMANDS = {
    "prepare": "Prepare a folder, zip or built-in set of images as a training dataset",
    "train": "Train a StyleGAN2-ADA network",
    "generate": "Generate images from seeds",
    "video": "Make an interpolation GIF or MP4",
    "mix": "Make a style-mixing grid",
    "metrics": "Compute FID/KID of a network against a dataset",
    "copies": "Is the network copying its training images? Nearest training images of its fakes",
    "info": "Show versions, devices and which path each op takes",
    "export": "Export a generator as safetensors, TorchScript or ONNX, or G + D as NVIDIA's pickle (checked)",
    "blend": "Blend two networks at a resolution split, or average snapshots",
    "project": "Find the latent of a real picture (projection)",
    "directions": "Find editing directions in w (closed-form factorisation or PCA)",
    "edit": "Move a latent along a direction; a GIF of the sweep",
    "latents": "List, save or delete named latents in the workdir's library",
    "stop": "Ask a run's trainer to stop after its step, with a snapshot (any platform)",
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine", description="StyleGAN Studio engine")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    modules = {}
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"engine.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    args = parser.parse_args(argv)
    from engine.errors import UserError

    try:
        code = modules[args.command].run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # Two file-system failures every command can meet, each with its own line rather than the catch-all.
        from engine.fsutil import disk_full_line, name_too_long_message

        if os.environ.get("STUDIO_DEBUG"):
            raise
        line = name_too_long_message(e, "the path") or disk_full_line(e)
        if line is None:
            print(f"error: {type(e).__name__}: {e} (set STUDIO_DEBUG=1 for the full traceback)", file=sys.stderr)
            return 1
        print(f"error: {line}", file=sys.stderr)
        return 2
    except Exception as e:  # never a traceback for the user unless asked for
        if os.environ.get("STUDIO_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set STUDIO_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

"""python -m engine prepare --source S --dest D --resolution N: pictures -> a training dataset.

Flags follow NVIDIA's dataset_tool where it has one (--source, --dest, --resolution or --width/--height,
--transform center-crop|center-crop-wide, --max-images). Pictures that cannot be used are skipped and listed in
<dest>.report.json; the run ends with one summary line. Exit 0 when at least one image was written.
"""

from engine.data import LABEL_MODES, RESIZE_FILTERS, TRANSFORMS


def add_arguments(parser):
    parser.add_argument("--source", required=True, metavar="PATH",
                        help="folder (searched recursively), .zip, CIFAR-10 python tarball, MNIST idx(.gz) images file, "
                             "or 'emoji' for the built-in set of 4,009 emoji")
    parser.add_argument("--dest", required=True, metavar="PATH",
                        help="output: a path ending .zip (uncompressed, NVIDIA's layout) or a new or empty folder")
    parser.add_argument("--resolution", type=int, metavar="N", help="output side in pixels, a power of two (e.g. 64, 256)")
    parser.add_argument("--width", type=int, metavar="N", help="same as --resolution (NVIDIA's name)")
    parser.add_argument("--height", type=int, metavar="N",
                        help="picture height for --transform center-crop-wide (smaller than the width)")
    parser.add_argument("--transform", default="center-crop", choices=TRANSFORMS,
                        help="center-crop (default), center-crop-wide (wide crop letterboxed on a square), "
                             "pad (whole picture letterboxed on --pad-color), stretch")
    parser.add_argument("--resize-filter", default="lanczos", choices=RESIZE_FILTERS, help="default lanczos")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="1 = grey, 3 = RGB (default)")
    parser.add_argument("--background", default="white", metavar="COLOUR",
                        help="what transparent parts become (name or #rrggbb, default white)")
    parser.add_argument("--pad-color", default="black", metavar="COLOUR", help="letterbox colour (default black)")
    parser.add_argument("--labels", default="auto", choices=LABEL_MODES,
                        help="folders: the first sub-folder is the class; json: the source's dataset.json; "
                             "auto (default): the source's own labels if it has any (dataset.json, CIFAR, MNIST); none")
    parser.add_argument("--dedupe", action="store_true", help="drop exact duplicates (same pixels after preparation)")
    parser.add_argument("--min-size", type=int, metavar="PX",
                        help="skip pictures smaller than this (default: half the resolution)")
    parser.add_argument("--max-images", type=int, metavar="N", help="stop after writing N images")
    parser.add_argument("--shuffle-seed", type=int, metavar="SEED",
                        help="shuffle the pictures with this seed first (default: sorted order)")
    parser.add_argument("--max-megapixels", type=float, default=100.0, metavar="MP",
                        help="skip pictures larger than this as decompression bombs (default 100)")
    parser.add_argument("--workers", type=int, metavar="N", help="decoder processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --dest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from engine.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(
        resolution=args.resolution, width=args.width, height=args.height, transform=args.transform,
        resize_filter=args.resize_filter, channels=args.channels, background=args.background,
        pad_color=args.pad_color, labels=args.labels, dedupe=args.dedupe, min_size=args.min_size,
        max_images=args.max_images, shuffle_seed=args.shuffle_seed, overwrite=args.overwrite,
        workers=args.workers, max_megapixels=args.max_megapixels)
    result = prepare(args.source, args.dest, options, show_progress=not args.no_progress)
    print(result.summary_line)
    return 0

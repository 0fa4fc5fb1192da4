"""
Check a dataset before training on it: every sample is read through the training reader, and the
report gives the number of images, the label values found against the classes, the ignored
fraction, per-class pixel and image counts, unreadable files, image/label size mismatches, and
hints on 1-based labels and on a class 0 that may be unlabeled background. Exits with 1 when it
finds an error (something that stops training or spoils the metrics), 0 otherwise.

Examples (``python tools/check_dataset.py`` in a clone, the ``maskformer-check-dataset`` command
once installed):
  python tools/check_dataset.py maskformer_synthetic_sem_seg_val
  python tools/check_dataset.py --spec my_data.yaml my_data_train my_data_val
  python tools/check_dataset.py --config-file my_config.yaml        # its DATASETS.TRAIN and TEST
  python tools/check_dataset.py --config-file my_config.yaml --opts MODEL.SEM_SEG_HEAD.NUM_CLASSES 5
  python tools/check_dataset.py --spec my_data.yaml my_data_train --json report.json
  python tools/check_dataset.py --spec my_data.yaml my_data_train --exif-orientation annotations_stored
  python tools/check_dataset.py --spec my_data.yaml mosaics --max-image-pixels 0   # any image size
"""

import json
import logging
import sys

from detectron2.utils.logger import setup_logger

from ..data import check_num_classes, register_dataset_spec
from ..data.datasets.custom import register_custom_datasets
from ..data.inspection import format_report, inspect_dataset
from ..data.reading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    EXIF_ORIENTATIONS,
    check_exif_orientation,
    check_max_image_pixels,
)
from ..engine.cli import exit_on_user_error
from ..engine.config_loading import ConfigError, load_config
from ..utils.file_io import atomic_open
from . import arguments

logger = logging.getLogger("maskformer.check_dataset")


def get_parser():
    parser = arguments.parser_with_examples("Check a dataset before training on it", __doc__)
    parser.add_argument("names", nargs="*", help="registered dataset names")
    parser.add_argument(
        "--spec", action="append", default=[], help="dataset-spec YAML to register first"
    )
    parser.add_argument(
        "--config-file",
        help="a config: registers its DATASETS.CUSTOM, checks NUM_CLASSES against its datasets, "
        "and checks its DATASETS.TRAIN and TEST when no name is given",
    )
    parser.add_argument(
        "--exif-orientation",
        choices=EXIF_ORIENTATIONS,
        help="INPUT.EXIF_ORIENTATION: on which pixels the annotations of images with an EXIF "
        "orientation were drawn (default: the config's, else refuse)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        help="INPUT.MAX_IMAGE_PIXELS: files with more pixels are refused before they are decoded; "
        f"0: no limit (default: the config's, else {DEFAULT_MAX_IMAGE_PIXELS}, PIL's "
        "decompression-bomb limit)",
    )
    parser.add_argument("--json", help="also write the reports to this JSON file")
    arguments.add_opts(parser)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="maskformer")
    with exit_on_user_error():
        return check(args)


def check(args) -> int:
    exif_orientation = args.exif_orientation or "refuse"
    max_pixels = DEFAULT_MAX_IMAGE_PIXELS
    names = list(args.names)
    errors = []
    for spec in args.spec:
        register_dataset_spec(spec)
    if args.config_file:
        cfg = load_config(args.config_file, args.opts, need_datasets=False)
        register_custom_datasets(cfg)
        names = names or list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))
        exif_orientation = args.exif_orientation or cfg.INPUT.EXIF_ORIENTATION
        max_pixels = cfg.INPUT.MAX_IMAGE_PIXELS  # its range checked by load_config
        try:
            check_exif_orientation(exif_orientation)
        except ValueError as e:
            raise ConfigError(f"{args.config_file}: {e}") from e
        try:
            check_num_classes(cfg)
        except ValueError as e:
            errors.append(str(e))
    if args.max_image_pixels is not None:
        try:
            max_pixels = check_max_image_pixels(args.max_image_pixels)
        except ValueError as e:
            raise ConfigError(f"--max-image-pixels: {e}") from e
    if not names:
        raise SystemExit("check_dataset.py: name a dataset, or give --config-file")
    for e in errors:
        print(f"ERROR: {e}", end="\n\n")
    reports = [inspect_dataset(name, exif_orientation, max_pixels) for name in names]
    for report in reports:
        print(format_report(report), end="\n\n")
        errors += report["errors"]
    if args.json:
        with atomic_open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    if errors:
        print(f"FAILED: {len(errors)} errors", file=sys.stderr)
        return 1
    return 0

"""
MaskFormer demo: draw semantic or panoptic segmentation on images, a video or the webcam
(``python demo/demo.py`` in a clone, the ``maskformer-demo`` command once installed).

  python demo/demo.py --model-dir output/my_run --input img.jpg "photos/*.png" folder/ --output out/
  python demo/demo.py --config-file CONFIG --input img.jpg --output out/ \
      [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu]
  python demo/demo.py --config-file CONFIG --video-input clip.mp4 --output drawn.mp4
  python demo/demo.py --exported export/model.onnx --input img.jpg --output drawn.jpg
  python demo/demo.py --config-file CONFIG --input "photos/*.jpg" --save-masks masks/ --batch-size 8

--model-dir is a training run's folder (OUTPUT_DIR): its config.yaml and trained weights
(model_final.pth, else the checkpoint last_checkpoint names). --config-file OUTPUT_DIR/config.yaml
does the same, since that config's MODEL.WEIGHTS are what training started from; --opts
MODEL.WEIGHTS FILE chooses other weights. No weights, or weights that do not fit the model (e.g.
an ImageNet backbone without the head), are refused; --random-weights runs an untrained model.

--output is a file for one input image (when it has an extension) and a folder otherwise; drawn
images keep their input's name and size. --save-masks DIR writes label PNGs, panoptic PNGs + JSON
and instance JSON (maskformer/prediction_files.py, with one record per image in DIR/records/)
instead of or beside the drawings. Without either, results
are shown in a window. --exported runs a model written by tools/export_model.py; its config
(resize, device) is the one saved at export time unless --config-file is given. --batch-size N
runs up to N images of one padded size together: each image's result is the one it gets alone.

A dataset without class names is drawn with "class 0", "class 1", ...; --confidence-threshold is
refused for a semantic-only model. An unreadable input is reported and the others still run (exit
code 1); a video whose frames stop early reports how many could not be read (exit code 1). User
errors print their message alone (exit code 2); --debug shows the traceback.
"""

import argparse
import contextlib
import glob
import logging
import os
import sys
import tempfile
import time
from typing import List, Optional

import cv2
import tqdm
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger
from tqdm.contrib.logging import logging_redirect_tqdm

from ..bulk_prediction import IMAGE_EXTENSIONS
from ..data.reading import read_image
from ..engine.checkpoint import CheckpointError
from ..engine.cli import USER_ERROR_EXIT_CODE
from ..prediction_files import MaskWriter
from ..predictor import READ_AHEAD_BATCHES, Predictor
from ..utils.file_io import atomic_open, atomic_path
from ..utils.text import plural
from ..visualization import VisualizationDemo
from . import arguments

logger = logging.getLogger("maskformer.demo")

WINDOW_NAME = "MaskFormer"
VIDEO_CODECS = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".mov": "mp4v"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MaskFormer demo")
    arguments.add_model_arguments(
        parser, random_weights_use="for trying the pipeline only", exported=True
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs (quote them) and folders")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0")
    parser.add_argument(
        "--output", help="output file (one input) or folder; omit to show results in a window"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=arguments.fraction,
        default=None,
        help="minimum score of panoptic segments (replaces MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD) "
        "and of drawn instances (default 0.5); refused for semantic-only models",
    )
    parser.add_argument(
        "--save-masks",
        metavar="DIR",
        help="write sem_seg/*.png label maps, panoptic/*.png + panoptic.json, instances.json (COCO RLE)",
    )
    parser.add_argument(
        "--batch-size", type=arguments.at_least(1), default=1, help="images per forward pass"
    )
    arguments.add_debug(parser)
    arguments.add_opts(parser)
    return parser


def setup_cfg(args) -> CfgNode:
    """The frozen config of the model options (maskformer.tools.arguments.model_config)."""
    cfg = arguments.model_config(args)
    cfg.freeze()
    return cfg


def build_predictor(
    cfg: CfgNode,
    exported: Optional[str] = None,
    confidence_threshold: Optional[float] = None,
    batch_size: int = 1,
    random_weights: bool = False,
) -> Predictor:
    """
    The Predictor of ``cfg`` (or of the ``exported`` model file, resized and placed as ``cfg``
    says); without MODEL.WEIGHTS only with ``random_weights``. ``confidence_threshold`` replaces
    the panoptic score threshold (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD) and is refused for
    a semantic-only model, whose output has no scores to threshold.
    """
    if exported:
        predictor = Predictor.from_exported(exported, cfg, confidence_threshold, batch_size)
    else:
        opts = []
        if confidence_threshold is not None:
            opts = ["MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", confidence_threshold]
        predictor = Predictor(cfg, opts=opts, batch_size=batch_size, random_weights=random_weights)
    if confidence_threshold is not None and predictor.tasks == ("sem_seg",):
        raise ValueError(
            "--confidence-threshold: this model gives semantic segmentation only (no "
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON / INSTANCE_ON), whose class scores are not "
            "thresholded; omit the option"
        )
    return predictor


def expand_inputs(patterns: List[str]) -> List[str]:
    """Files as given, folders as their image files (sorted), globs as their matching files (sorted)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            names = sorted(n for n in os.listdir(pattern) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(pattern, n) for n in names]
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            matches = sorted(
                p
                for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                if os.path.isfile(p)
            )
            if not matches:
                raise FileNotFoundError(
                    f"--input {pattern}: no such file or folder, and no file matches it as a glob"
                )
            paths += matches
    return list(dict.fromkeys(paths))


def shown(path: str) -> str:
    """``path`` for messages: bytes that are not UTF-8 (kept by Python as surrogates) as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def writable_folder(folder: str, option: str) -> str:
    """Create ``folder`` if needed and check that files can be created in it, before any work."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"{option} {shown(folder)}: cannot write there ({e.strerror})") from e
    return folder


def opencv_path(path: str, option: str) -> str:
    """OpenCV's video reader and writer take UTF-8 names only."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{option} {shown(path)}: OpenCV cannot open a file whose name is not valid UTF-8; "
            f"rename it"
        ) from None
    return path


def unique_names(names: List[str], what: str, folder: str) -> List[str]:
    clashes = sorted({shown(n) for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"Several inputs are named {clashes}: their {what} would overwrite each other in {folder}"
        )
    return names


def image_output_paths(inputs: List[str], output: str) -> List[str]:
    """--output is the file for a single input when it has an extension, else the folder for all."""
    if len(inputs) == 1 and os.path.splitext(output)[1] and not os.path.isdir(output):
        writable_folder(os.path.dirname(os.path.abspath(output)), "--output")
        return [output]
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output}: is a file; give a folder for {len(inputs)} inputs")
    names = unique_names([os.path.basename(p) for p in inputs], "drawings", output)
    writable_folder(output, "--output")
    return [os.path.join(output, n) for n in names]


def mask_names(inputs: List[str], folder: str) -> List[str]:
    """The output stem of each input under --save-masks (its file name without extension)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    unique_names(stems, "masks", folder)
    writable_folder(folder, "--save-masks")
    return stems


def write_image(path: str, image_bgr):
    """Writes atomically: an existing file is replaced only by a complete one."""
    ext = os.path.splitext(path)[1]
    try:
        ok, encoded = cv2.imencode(ext, image_bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{shown(path)}: OpenCV cannot write images with the extension {ext!r}")
    try:
        with atomic_open(path, "wb") as f:
            f.write(encoded.tobytes())
    except OSError as e:
        raise OSError(f"{shown(path)}: cannot write the image ({e.strerror})") from e


def console_loggers() -> List[logging.Logger]:
    """The loggers setup_logger gave console handlers: they print through tqdm during a bar."""
    return [logging.getLogger(name) for name in ("detectron2", "fvcore", "maskformer")]


def run_on_images(
    demo: VisualizationDemo,
    inputs: List[str],
    output: Optional[str],
    save_masks: Optional[str] = None,
    batch_size: int = 1,
) -> int:
    """Returns the number of inputs that failed (each is logged with its reason)."""
    outputs = image_output_paths(inputs, output) if output else [None] * len(inputs)
    stems = mask_names(inputs, save_masks) if save_masks else [None] * len(inputs)
    masks = MaskWriter(save_masks, demo.predictor) if save_masks else None
    for path in inputs:
        if shown(path) != path:
            logger.warning(f"{shown(path)}: the file name is not valid UTF-8 (shown with escapes)")
    failed = 0
    read_ahead = batch_size * READ_AHEAD_BATCHES if batch_size > 1 else 1
    max_pixels = demo.predictor.cfg.INPUT.MAX_IMAGE_PIXELS
    bar = tqdm.tqdm(total=len(inputs), unit="image", disable=not (output or save_masks))
    with logging_redirect_tqdm(loggers=console_loggers()), bar:
        for start in range(0, len(inputs), read_ahead):
            window = []
            for i in range(start, min(start + read_ahead, len(inputs))):
                try:
                    window.append((i, read_image(inputs[i], "BGR", max_pixels=max_pixels)))
                except ValueError as e:  # BadSampleError: names the file and the problem
                    logger.error(shown(str(e)))
                    failed += 1
                    bar.update()
            if not window:
                continue
            begin = time.perf_counter()
            predictions = demo.predictor([image for _, image in window], format="BGR")
            seconds = (time.perf_counter() - begin) / len(window)
            for (i, image), prediction in zip(window, predictions):
                logger.info(f"{shown(inputs[i])}: {demo.describe(prediction)} in {seconds:.2f}s")
                try:
                    if masks is not None:
                        masks.add(stems[i], inputs[i], prediction)
                    if outputs[i]:
                        drawn = demo.draw(image[:, :, ::-1], prediction).get_image()
                        write_image(outputs[i], cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                except (OSError, ValueError) as e:
                    logger.error(str(e))
                    failed += 1
                bar.update()
                if not (outputs[i] or masks):
                    show(demo.draw(image[:, :, ::-1], prediction).get_image()[:, :, ::-1])
                    if cv2.waitKey(0) == 27:  # esc
                        return failed
    if masks is not None:
        for path in masks.close():
            logger.info(f"Wrote {shown(path)}")
    return failed


def video_output_path(source_name: str, output: str) -> str:
    path = output if os.path.splitext(output)[1] else os.path.join(output, source_name)
    if os.path.splitext(path)[1].lower() not in VIDEO_CODECS:
        raise ValueError(
            f"--output {shown(path)}: unsupported video extension; use one of {sorted(VIDEO_CODECS)}"
        )
    writable_folder(os.path.dirname(os.path.abspath(path)), "--output")
    return opencv_path(path, "--output")


def run_on_stream(
    demo: VisualizationDemo, video: cv2.VideoCapture, output_path: Optional[str], name: str
) -> int:
    """
    Draws every frame of ``video`` into ``output_path`` (or a window). Returns how many of the
    frames the video's header announces could not be read (0 for a camera).
    """
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(
        video.get(cv2.CAP_PROP_FRAME_HEIGHT)
    )
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    total = max(int(video.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or None
    stopped = False
    # an existing output_path is replaced only by a complete video
    with contextlib.ExitStack() as stack:
        stack.callback(video.release)
        writer = None
        if output_path:
            partial = stack.enter_context(atomic_path(output_path, keep_suffix=True))
            ext = os.path.splitext(output_path)[1]
            writer = cv2.VideoWriter(
                partial, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext.lower()]), fps, (width, height)
            )
            stack.callback(writer.release)  # runs before the rename
            if not writer.isOpened():
                raise OSError(f"{output_path}: OpenCV cannot write this video format here")
        start = time.perf_counter()
        bar = tqdm.tqdm(total=total, unit="frame", disable=writer is None)
        with logging_redirect_tqdm(loggers=console_loggers()), bar:
            for frame in demo.run_on_video(video):
                bar.update()
                if writer is not None:
                    writer.write(frame)
                else:
                    show(frame)
                    if cv2.waitKey(1) == 27:  # esc
                        stopped = True
                        break
    frames = demo.frames_read
    logger.info(f"{plural(frames, 'frame')} in {time.perf_counter() - start:.2f}s")
    unread = 0 if stopped or total is None else max(total - frames, 0)
    if unread:
        logger.error(
            f"{name}: {unread} of the {plural(total, 'frame')} its header announces could not be "
            f"read (truncated or damaged file?); the output holds the {frames} read"
        )
    return unread


def show(image_bgr):
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image_bgr)
    except cv2.error as e:
        raise RuntimeError(
            "Cannot open a window (headless OpenCV?); pass --output to write files instead"
        ) from e


def open_video(source, name: str) -> cv2.VideoCapture:
    video = cv2.VideoCapture(source)
    if not video.isOpened():
        raise OSError(f"{name}: cannot open it as a video")
    return video


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="maskformer")
    logger.info(f"Arguments: {args}")
    if args.save_masks and not args.input:
        raise ValueError("--save-masks works with --input (image files)")
    cfg = setup_cfg(args)
    predictor = build_predictor(
        cfg, args.exported, args.confidence_threshold, args.batch_size, args.random_weights
    )
    demo = VisualizationDemo(predictor, instance_threshold=args.confidence_threshold)

    if args.input:
        inputs = expand_inputs(args.input)
        failed = run_on_images(demo, inputs, args.output, args.save_masks, args.batch_size)
        if failed:
            logger.error(f"{failed} of {plural(len(inputs), 'input')} failed")
        return 1 if failed else 0
    if args.video_input:
        if not os.path.isfile(args.video_input):
            raise FileNotFoundError(f"--video-input {shown(args.video_input)}: no such file")
        name = opencv_path(args.video_input, "--video-input")
        video = open_video(name, name)
        output = video_output_path(os.path.basename(name), args.output) if args.output else None
    else:
        name = "webcam 0"
        video = open_video(0, name)
        output = video_output_path("webcam.avi", args.output) if args.output else None
    return 1 if run_on_stream(demo, video, output, name) else 0


def run_cli(argv: Optional[List[str]] = None) -> int:
    """
    main (``argv``, default ``sys.argv[1:]``), ending on a user error (bad option, input, output
    folder, config or weights) as train_net.py does (maskformer.engine.cli): the message alone,
    exit code 2; --debug re-raises. The demo's own option and output errors are ValueError /
    OSError, which that helper leaves out.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except (ValueError, OSError, CheckpointError) as e:
        if "--debug" in argv:
            raise
        print(f"error: {shown(str(e))}\n(run with --debug for the traceback)", file=sys.stderr)
        return USER_ERROR_EXIT_CODE

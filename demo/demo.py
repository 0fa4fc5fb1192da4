#!/usr/bin/env python
"""
MaskFormer demo: draw semantic or panoptic segmentation on images, a video or the webcam.

  python demo/demo.py --config-file CONFIG --input img.jpg "photos/*.png" folder/ --output out/ \
      [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu]
  python demo/demo.py --config-file CONFIG --video-input clip.mp4 --output drawn.mp4
  python demo/demo.py --exported export/model.onnx --input img.jpg --output drawn.jpg

--output is a file for one input image (when it has an extension) and a folder otherwise; drawn
images keep their input's name and size. Without --output, results are shown in a window.
--exported runs a model written by tools/export_model.py; its config (resize, device) is the one
saved at export time unless --config-file is given.
"""
import argparse
import contextlib
import glob
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

# so the script runs from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import tqdm  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from predictor import VisualizationDemo  # noqa: E402

import maskformer  # noqa: E402,F401  (registers the model components and datasets)
from maskformer import add_maskformer_config  # noqa: E402
from maskformer.engine.config_loading import load_config, use_cpu_without_cuda  # noqa: E402
from maskformer.export import load_export_metadata  # noqa: E402
from maskformer.utils.file_io import atomic_path  # noqa: E402

logger = logging.getLogger("maskformer.demo")

WINDOW_NAME = "MaskFormer"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_CODECS = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".mov": "mp4v"}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MaskFormer demo")
    parser.add_argument(
        "--config-file", metavar="FILE", help="model config (optional with --exported)"
    )
    parser.add_argument(
        "--exported", metavar="MODEL_FILE", help="a .ts/.pt/.onnx model from tools/export_model.py"
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
        type=float,
        default=None,
        help="minimum score of panoptic segments (replaces MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD) "
        "and of drawn instances (default 0.5)",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def setup_cfg(args):
    if args.config_file:
        cfg = load_config(args.config_file, args.opts, need_datasets=False)
    elif args.exported:
        cfg = get_cfg()
        add_maskformer_config(cfg)
        cfg.merge_from_other_cfg(cfg.load_cfg(load_export_metadata(args.exported)["config"]))
        cfg.merge_from_list(args.opts)
    else:
        raise ValueError("--config-file is required unless --exported is given")
    if use_cpu_without_cuda(cfg):
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
    cfg.freeze()
    return cfg


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


def image_output_paths(inputs: List[str], output: str) -> List[str]:
    """--output is the file for a single input when it has an extension, else the folder for all."""
    if len(inputs) == 1 and os.path.splitext(output)[1] and not os.path.isdir(output):
        return [output]
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output}: is a file; give a folder for {len(inputs)} inputs")
    names = [os.path.basename(p) for p in inputs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"Several inputs are named {clashes}: their drawings would overwrite each other in {output}"
        )
    os.makedirs(output, exist_ok=True)
    return [os.path.join(output, n) for n in names]


def write_image(path: str, image_bgr):
    """Writes atomically: an existing file is replaced only by a complete one."""
    with atomic_path(path, keep_suffix=True) as partial:
        if not cv2.imwrite(partial, image_bgr):
            ext = os.path.splitext(path)[1]
            raise OSError(
                f"{path}: OpenCV could not write the image (unsupported extension {ext!r}?)"
            )


def run_on_images(demo: VisualizationDemo, inputs: List[str], output: Optional[str]) -> int:
    """Returns the number of inputs that failed (each is logged with its reason)."""
    outputs = image_output_paths(inputs, output) if output else [None] * len(inputs)
    failed = 0
    for path, out_path in zip(tqdm.tqdm(inputs, disable=not output), outputs):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:
            logger.error(f"{path}: cannot read the image ({e})")
            failed += 1
            continue
        start = time.perf_counter()
        predictions, drawn = demo.run_on_image(image)
        logger.info(f"{path}: {demo.describe(predictions)} in {time.perf_counter() - start:.2f}s")
        if out_path:
            write_image(out_path, cv2.cvtColor(drawn.get_image(), cv2.COLOR_RGB2BGR))
        else:
            show(drawn.get_image()[:, :, ::-1])
            if cv2.waitKey(0) == 27:  # esc
                break
    return failed


def video_output_path(source_name: str, output: str) -> str:
    path = output if os.path.splitext(output)[1] else os.path.join(output, source_name)
    if os.path.splitext(path)[1].lower() not in VIDEO_CODECS:
        raise ValueError(
            f"--output {path}: unsupported video extension; use one of {sorted(VIDEO_CODECS)}"
        )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def run_on_stream(
    demo: VisualizationDemo, video: cv2.VideoCapture, output_path: Optional[str]
) -> int:
    """Draws every frame of ``video`` into ``output_path`` (or a window); returns the frame count."""
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(
        video.get(cv2.CAP_PROP_FRAME_HEIGHT)
    )
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
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
        frames = 0
        start = time.perf_counter()
        for frame in tqdm.tqdm(demo.run_on_video(video), total=total, disable=writer is None):
            frames += 1
            if writer is not None:
                writer.write(frame)
            else:
                show(frame)
                if cv2.waitKey(1) == 27:  # esc
                    break
    logger.info(f"{frames} frames in {time.perf_counter() - start:.2f}s")
    return frames


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
    cfg = setup_cfg(args)
    demo = VisualizationDemo(
        cfg, exported=args.exported, confidence_threshold=args.confidence_threshold
    )

    if args.input:
        inputs = expand_inputs(args.input)
        failed = run_on_images(demo, inputs, args.output)
        if failed:
            logger.error(f"{failed} of {len(inputs)} inputs failed")
        return 1 if failed else 0
    if args.video_input:
        if not os.path.isfile(args.video_input):
            raise FileNotFoundError(f"--video-input {args.video_input}: no such file")
        video = open_video(args.video_input, args.video_input)
        output = (
            video_output_path(os.path.basename(args.video_input), args.output)
            if args.output
            else None
        )
    else:
        video = open_video(0, "webcam 0")
        output = video_output_path("webcam.avi", args.output) if args.output else None
    run_on_stream(demo, video, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

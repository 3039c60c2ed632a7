"""`image_preprocess`, `video_preprocess`, `audio_preprocess`: the inputs an embedding model takes.

An image upright, in RGB, at most MODEL_INPUT_SIZE on its longer side; a video's frames at a fixed
rate (`data.fps`, default 1) or at each change of scene (`data.scene`, a threshold from 0 to 1); a
recording as 16 kHz mono segments of SEGMENT_SECONDS. Each in the cache, named by the content's digest.
"""

from __future__ import annotations

from typing import Any

from msearchd.handlers import TaskContext, TaskFailed
from msearchd.handlers.media import ffmpeg
from msearchd.handlers.media.cache import entry, source, writing, writing_file
from msearchd.handlers.media.images import MODEL_INPUT_SIZE, fitted, load
from msearchd.handlers.media.sniff import Kind

SEGMENT_SECONDS = 30
SAMPLE_RATE = 16000


def image(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    path, digest, kind = source(data)
    if kind is not Kind.IMAGE:
        raise TaskFailed(f"{path}: not an image")
    target = entry("inputs", digest, ".jpg")
    if not target.exists():  # no current operation, as for a thumbnail of an image (see thumbnail.run)
        with writing_file(target) as temp:
            fitted(load(path, fit=MODEL_INPUT_SIZE), MODEL_INPUT_SIZE).save(temp, "JPEG", quality=95)
    return {"path": str(path), "input": str(target), "bytes": target.stat().st_size}


def video(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    path, digest, kind = source(data)
    if kind is not Kind.VIDEO:
        raise TaskFailed(f"{path}: not a video")
    scene, fps = data.get("scene"), data.get("fps", 1)
    if scene is not None:
        if not isinstance(scene, int | float) or not 0 < scene < 1:
            raise TaskFailed("data.scene must be a number between 0 and 1")
        choose, name = f"select='gt(scene,{scene})'", f"-scene{scene}"
    else:
        if not isinstance(fps, int | float) or not 0 < fps <= 60:
            raise TaskFailed("data.fps must be a number of frames per second, above 0 and at most 60")
        choose, name = f"fps={fps}", f"-fps{fps}"
    target = entry("frames", digest, name)
    if not target.exists():
        info = ffmpeg.probe(path)
        if not info.has_video:
            raise TaskFailed(f"{path}: no video stream")
        with writing(target) as temp:
            temp.mkdir()
            size = MODEL_INPUT_SIZE
            ffmpeg.run(
                ctx,
                [
                    "-i",
                    str(path),
                    "-map",
                    "0:v:0",
                    "-vf",
                    f"{choose},scale={size}:{size}:force_original_aspect_ratio=decrease",
                    "-fps_mode",
                    "vfr",
                    "-q:v",
                    "3",
                    str(temp / "%05d.jpg"),
                ],
                info.duration,
                f"frames of {path.name}",
            )
    frames = sum(1 for _ in target.iterdir())
    return {"path": str(path), "frames_dir": str(target), "frames": frames}


def audio(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    path, digest, kind = source(data)
    if kind is Kind.IMAGE:
        raise TaskFailed(f"{path}: not a recording")
    target = entry("audio", digest, f"-{SAMPLE_RATE}")
    if not target.exists():
        info = ffmpeg.probe(path)
        if not info.has_audio:
            raise TaskFailed(f"{path}: no sound")
        with writing(target) as temp:
            temp.mkdir()
            ffmpeg.run(
                ctx,
                [
                    "-i",
                    str(path),
                    "-map",
                    "0:a:0",
                    "-ac",
                    "1",
                    "-ar",
                    str(SAMPLE_RATE),
                    "-c:a",
                    "pcm_s16le",
                    "-f",
                    "segment",
                    "-segment_time",
                    str(SEGMENT_SECONDS),
                    str(temp / "%04d.wav"),
                ],
                info.duration,
                f"resampling {path.name}",
            )
    segments = sum(1 for _ in target.iterdir())
    return {"path": str(path), "segments_dir": str(target), "segments": segments}

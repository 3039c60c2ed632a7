"""`thumbnail_generate`: a small WebP of an image, or of a representative frame of a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msearchd.handlers import TaskContext, TaskFailed
from msearchd.handlers.media import ffmpeg
from msearchd.handlers.media.cache import entry, source, writing, writing_file
from msearchd.handlers.media.images import THUMBNAIL_SIZE, make_thumbnail
from msearchd.handlers.media.sniff import Kind

# Where in a video its frame is taken (a fraction of its length): past the titles and fades of the start.
FRAME_AT = 1 / 3
# The `thumbnail` filter picks the most typical frame of this many, rather than a blurred one.
FRAME_CANDIDATES = 25


def run(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    path, digest, kind = source(data)
    target = entry("thumbnails", digest, ".webp")
    if not target.exists():
        if kind is Kind.IMAGE:
            # No current operation: a still image takes tens of milliseconds, the task's type and
            # path say what it does, and the report would cost the daemon a wake-up of its own.
            with writing_file(target) as temp:
                make_thumbnail(path, temp)
        elif kind is Kind.VIDEO:
            with writing(target) as temp:
                frame = temp.with_suffix(".png")
                video_frame(ctx, path, frame)
                make_thumbnail(frame, temp)
        else:
            raise TaskFailed(f"{path}: a recording has no thumbnail (its preview is a waveform picture)")
    return {"path": str(path), "thumbnail": str(target), "bytes": target.stat().st_size}


def video_frame(ctx: TaskContext, path: Path, frame: Path) -> None:
    info = ffmpeg.probe(path)
    if not info.has_video:
        raise TaskFailed(f"{path}: no video stream to take a frame from")
    seek = (info.duration or 0) * FRAME_AT
    for start in (seek, 0.0) if seek else (0.0,):
        ffmpeg.run(
            ctx,
            [
                "-ss",
                f"{start:.3f}",
                "-i",
                str(path),
                "-map",
                "0:v:0",
                "-vf",
                f"thumbnail=n={FRAME_CANDIDATES},scale={THUMBNAIL_SIZE * 2}:-2",
                "-frames:v",
                "1",
                "-update",
                "1",
                "-y",
                str(frame),
            ],
            None,
            f"frame of {path.name}",
        )
        if frame.exists():
            return
    raise TaskFailed(f"{path}: ffmpeg found no frame to show")

"""`preview_generate`: a short low-resolution animation of a video, a waveform picture of a recording."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from msearchd.handlers import TaskContext, TaskFailed
from msearchd.handlers.media import ffmpeg
from msearchd.handlers.media.cache import entry, source, writing
from msearchd.handlers.media.sniff import Kind

# A video's preview: this many frames spread over its length, this high, shown this long each.
PREVIEW_FRAMES = 12
PREVIEW_HEIGHT = 144
FRAME_MS = 250
WAVEFORM_SIZE = "640x120"


def run(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    path, digest, kind = source(data)
    if kind is Kind.VIDEO:
        target = entry("previews", digest, ".webp")
        if not target.exists():
            with writing(target) as temp:
                video_preview(ctx, path, temp)
        with Image.open(target) as animation:
            frames = animation.n_frames  # type: ignore[attr-defined]  # set by Pillow's WebP plugin, not ImageFile
    elif kind is Kind.AUDIO:
        target = entry("previews", digest, ".png")
        if not target.exists():
            with writing(target) as temp:
                waveform(ctx, path, temp)
        frames = 1
    else:
        raise TaskFailed(f"{path}: a still image has no preview (its thumbnail is the picture)")
    return {"path": str(path), "preview": str(target), "bytes": target.stat().st_size, "frames": frames}


def video_preview(ctx: TaskContext, path: Path, target: Path) -> None:
    info = ffmpeg.probe(path)
    if not info.has_video:
        raise TaskFailed(f"{path}: no video stream to preview")
    rate = PREVIEW_FRAMES / info.duration if info.duration else 1.0
    folder = target.parent / "frames"
    folder.mkdir()
    ffmpeg.run(
        ctx,
        [
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-vf",
            f"fps={rate:.6f},scale=-2:{PREVIEW_HEIGHT}",
            "-frames:v",
            str(PREVIEW_FRAMES),
            str(folder / "%03d.png"),
        ],
        info.duration,
        f"preview of {path.name}",
    )
    names = sorted(folder.iterdir())
    if not names:
        raise TaskFailed(f"{path}: ffmpeg found no frame to show")
    ctx.set_operation(f"writing the preview of {path.name}")
    frames = [Image.open(name) for name in names]
    frames[0].save(
        target, "WEBP", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0, quality=70
    )


def waveform(ctx: TaskContext, path: Path, target: Path) -> None:
    info = ffmpeg.probe(path)
    if not info.has_audio:
        raise TaskFailed(f"{path}: no sound to draw")
    ffmpeg.run(
        ctx,
        [
            "-i",
            str(path),
            "-filter_complex",
            f"[0:a:0]aformat=channel_layouts=mono,showwavespic=s={WAVEFORM_SIZE}:colors=#3a7bd5",
            "-frames:v",
            "1",
            "-update",
            "1",
            "-f",
            "image2",
            "-c:v",
            "png",
            str(target),
        ],
        info.duration,
        f"waveform of {path.name}",
    )

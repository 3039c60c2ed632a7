"""Still images with Pillow: open any format it (or the HEIC plugin) knows, upright, as RGB."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from msearchd.handlers import TaskFailed

with contextlib.suppress(ImportError):  # HEIC/HEIF photos, where the plugin is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()

# The longest side of a thumbnail, and of the image an embedding model gets.
THUMBNAIL_SIZE = 256
MODEL_INPUT_SIZE = 512
# A picture of more pixels than this is refused rather than decoded (a decompression bomb).
MAX_PIXELS = 250_000_000


def load(path: Path, fit: int | None = None) -> Image.Image:
    """The image, turned as its EXIF orientation says, in RGB; TaskFailed for a file Pillow cannot
    read, a truncated one included. With `fit`, a JPEG may be decoded at a fraction of its size, as
    long as both sides stay at least `fit` pixels: much faster, for a picture made smaller anyway."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise TaskFailed(f"{path}: {img.width}x{img.height} pixels is more than this decodes")
                if fit is not None:
                    img.draft("RGB", (fit, fit))
                img.load()
                upright = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise TaskFailed(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise TaskFailed(f"{path}: cannot decode the image ({exc})") from None
    return upright if upright.mode == "RGB" else upright.convert("RGB")


def fitted(img: Image.Image, size: int) -> Image.Image:
    """`img` made to fit in a `size` square, keeping its proportions (never enlarged)."""
    small = img.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return small


def make_thumbnail(source: Path, target: Path, size: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    """A small WebP of an image file at `target`; returns its size in pixels. What the handler does
    for an image, and what the benchmark compares the daemon with."""
    small = fitted(load(source, fit=size), size)
    small.save(target, "WEBP", quality=80, method=4)
    return small.size

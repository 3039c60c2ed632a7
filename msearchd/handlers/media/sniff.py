"""What kind of media a file holds, from its first bytes: a name says what a file should be, not what
it is."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

# Enough for every signature below.
HEAD_BYTES = 64


class Kind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


# ISO base media brands (bytes 8-12 of an `ftyp` box) that hold a still image or sound, not a video.
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}


def sniff_bytes(head: bytes) -> Kind | None:
    """The kind of media whose file starts with `head`; None for anything else."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Kind.IMAGE
    if head[:6] in (b"GIF87a", b"GIF89a") or (head[:2] == b"BM" and len(head) >= 26):
        return Kind.IMAGE
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Kind.IMAGE
    if head[:4] == b"RIFF":
        form = head[8:12]
        return {b"WEBP": Kind.IMAGE, b"AVI ": Kind.VIDEO, b"WAVE": Kind.AUDIO}.get(form)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return Kind.IMAGE
        return Kind.AUDIO if brand in _AUDIO_BRANDS else Kind.VIDEO
    if head.startswith(b"\x1a\x45\xdf\xa3") or head.startswith(b"\x00\x00\x01\xba"):
        return Kind.VIDEO  # Matroska / WebM; MPEG program stream
    if head[:4] in (b"fLaC", b"OggS") or head.startswith(b"ID3"):
        return Kind.AUDIO
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return Kind.AUDIO  # an MPEG audio frame (MP3) or ADTS (AAC) without a tag
    return None


def sniff(path: Path) -> Kind | None:
    with path.open("rb") as f:
        return sniff_bytes(f.read(HEAD_BYTES))


def kind_of(path: Path) -> Kind:
    """The kind of media `path` holds; TaskFailed, saying why, for anything else."""
    from msearchd.handlers import TaskFailed

    try:
        kind = sniff(path)
    except OSError as exc:
        raise TaskFailed(f"{path}: cannot read it: {exc.strerror}") from None
    if kind is None:
        empty = path.stat().st_size == 0
        raise TaskFailed(
            f"{path}: " + ("an empty file" if empty else "not an image, video or audio file (by its content)")
        )
    return kind

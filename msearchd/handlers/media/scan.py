"""`file_scan`: walk a folder and queue the pipeline of each image, video and recording that is new
or changed since the last scan of that folder.

What a scan saw is kept in `media/index/<digest of the folder>.msgpack` in the state folder: per
file its size, modification time, content digest and the tasks queued for it. A file whose size and
time are as recorded is not read again; one whose content is still the same is not queued again.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from msearchd.handlers import TaskCancelled, TaskContext, TaskFailed
from msearchd.handlers.media.cache import file_digest, media_root, writing_file
from msearchd.handlers.media.sniff import Kind, sniff

# The longest between two progress reports of a scan.
REPORT_SECONDS = 0.2
# How many unreadable files and folders the result names (it says how many there were in all), and
# how much of each: a task's result is small.
NAMED_MAX = 10
NAMED_CHARS = 300
EMBED_TYPES = {kind: f"file_embed_{kind}" for kind in Kind}
PREPROCESS_TYPES = {kind: f"{kind}_preprocess" for kind in Kind}


@dataclass(slots=True)
class Tally:
    folders: int = 0
    files: int = 0
    queued: int = 0  # files whose pipeline was queued
    tasks: int = 0
    unchanged: int = 0
    not_media: int = 0
    superseded: int = 0
    unreadable: list[str] = field(default_factory=list)
    unreadable_count: int = 0

    def cannot_read(self, path: str, exc: OSError) -> None:
        self.unreadable_count += 1
        if len(self.unreadable) < NAMED_MAX:
            self.unreadable.append(f"{path}: {exc.strerror}"[-NAMED_CHARS:])


def index_path(root: Path) -> Path:
    name = hashlib.blake2b(os.fsencode(root), digest_size=16).hexdigest()
    return media_root() / "index" / f"{name}.msgpack"


def load_index(path: Path) -> dict[str, list[Any]]:
    """path -> [size, mtime_ns, digest (None: not media), task ids]; empty when there is none, or it
    is unreadable (everything is then looked at again, and the cache saves the work already done)."""
    try:
        index = msgpack.unpackb(path.read_bytes())
    except (OSError, ValueError, msgpack.UnpackException):
        return {}
    return index if isinstance(index, dict) else {}


def save_index(path: Path, index: dict[str, list[Any]]) -> None:
    with writing_file(path) as temp:
        temp.write_bytes(msgpack.packb(index, use_bin_type=True))


def run(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
    raw = data.get("path")
    if not isinstance(raw, str) or not raw:
        raise TaskFailed("data.path must name a folder")
    root = Path(raw).expanduser().absolute()
    if not root.is_dir():
        raise TaskFailed(f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    _ = ctx.cancelled  # checked between requests: the index of what was queued is then kept
    embeds = {kind: t for kind, t in EMBED_TYPES.items() if ctx.handles(t)}
    where = index_path(root)
    old = load_index(where)
    new: dict[str, list[Any]] = {}
    tally = Tally()
    state_dir = media_root().parent
    pending = [root]
    last_report = 0.0
    batch = Batch()
    walked = False

    def checkpoint(folder: Path) -> None:
        """Report progress now and then, and stop here if the scan was cancelled."""
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= REPORT_SECONDS:
            last_report = now
            ctx.progress(
                tally.folders / (tally.folders + len(pending) + 1),
                f"reading {folder} ({tally.folders} folders, {tally.files} files seen)",
            )
        if ctx.cancelled:
            raise TaskCancelled("cooperative")

    try:
        while pending:
            folder = pending.pop()
            checkpoint(folder)
            tally.folders += 1
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                tally.cannot_read(str(folder), exc)
                continue
            for item in entries:
                try:
                    if item.is_dir(follow_symlinks=False):
                        if not item.name.startswith(".") and Path(item.path) != state_dir:
                            pending.append(Path(item.path))
                    elif item.is_file(follow_symlinks=False):
                        tally.files += 1
                        look_at(Path(item.path), item.stat(), old, new, embeds, tally, batch)
                        if len(batch.files) >= BATCH_FILES:
                            queue(ctx, batch, new, tally)
                            checkpoint(folder)
                except OSError as exc:
                    tally.cannot_read(item.path, exc)
            queue(ctx, batch, new, tally)
        walked = True
        ctx.progress(1.0, f"read {root} ({tally.folders} folders, {tally.files} files)")
    finally:
        if not walked:
            new = {**old, **new}  # stopped part way: what was not looked at stays as it was
        save_index(where, new)
    result: dict[str, Any] = {
        "path": str(root),
        "folders": tally.folders,
        "files": tally.files,
        "queued_files": tally.queued,
        "queued_tasks": tally.tasks,
        "unchanged": tally.unchanged,
        "not_media": tally.not_media,
        "superseded": tally.superseded,
        "gone": len(old.keys() - new.keys()),
    }
    if tally.unreadable_count:
        result["unreadable"] = tally.unreadable_count
        result["unreadable_first"] = tally.unreadable
    missing = sorted(set(EMBED_TYPES.values()) - set(embeds.values()))
    if missing:
        result["embeddings"] = (
            f"not queued: no handler is configured for {', '.join(missing)} (msearchd has no built-in model)"
        )
    return result


@dataclass(slots=True)
class Batch:
    """The pipelines of files found since the last request to the daemon: they are queued together,
    a round trip and a commit for up to BATCH_FILES files rather than one per task."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    # Per file: its key, its index entry without the task ids, and the span of its tasks in `tasks`.
    files: list[tuple[str, list[Any], int, int]] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # earlier tasks of those files


# How many files' pipelines one request queues: a longer request holds up the daemon's other calls.
BATCH_FILES = 50


def look_at(
    path: Path,
    st: os.stat_result,
    old: dict[str, list[Any]],
    new: dict[str, list[Any]],
    embeds: dict[Kind, str],
    tally: Tally,
    batch: Batch,
) -> None:
    """Add the pipeline of `path` to `batch` if it is media, new or changed; otherwise record it in
    `new` as it is."""
    key = str(path)
    seen = old.get(key)
    if seen is not None and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
        new[key] = seen
        if seen[2] is None:
            tally.not_media += 1
        else:
            tally.unchanged += 1
        return
    kind = sniff(path)
    if kind is None:
        new[key] = [st.st_size, st.st_mtime_ns, None, []]  # not read again while it stays as it is
        tally.not_media += 1
        return
    digest = file_digest(path)
    if seen is not None and seen[2] == digest:
        new[key] = [st.st_size, st.st_mtime_ns, digest, seen[3]]
        tally.unchanged += 1
        return
    if seen is not None:
        batch.superseded.extend(seen[3])
    data = {"path": key, "kind": str(kind), "digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    first = len(batch.tasks)
    batch.tasks.extend(pipeline(kind, data, embeds.get(kind), first))
    batch.files.append((key, [st.st_size, st.st_mtime_ns, digest], first, len(batch.tasks)))


def queue(ctx: TaskContext, batch: Batch, new: dict[str, list[Any]], tally: Tally) -> None:
    """Queue the batch's pipelines, after cancelling the tasks they replace that have not started;
    record their files in `new` with their tasks' ids, for the next scan to replace in turn."""
    if batch.superseded:
        tally.superseded += len(ctx.cancel_waiting(batch.superseded))
    ids = ctx.submit_many(batch.tasks) if batch.tasks else []
    for key, entry, first, end in batch.files:
        new[key] = [*entry, ids[first:end]]
    tally.queued += len(batch.files)
    tally.tasks += len(ids)
    batch.tasks.clear()
    batch.files.clear()
    batch.superseded.clear()


def pipeline(kind: Kind, data: dict[str, Any], embed_type: str | None, first: int) -> list[dict[str, Any]]:
    """The tasks of one file, each at its type's priority, each step after the one it needs:
    preprocessing, then the embedding (where a handler for it is configured); the thumbnail of an
    image or video; a video's preview after its thumbnail, a recording's waveform picture. `first`
    is where the file's tasks begin in the batch (`after` counts from the batch's start).

    Every task a scan queues is made here.
    """
    tasks: list[dict[str, Any]] = [{"type": PREPROCESS_TYPES[kind], "data": data}]
    if embed_type is not None:
        tasks.append({"type": embed_type, "data": data, "after": [first]})
    if kind is Kind.AUDIO:
        tasks.append({"type": "preview_generate", "data": data})
        return tasks
    thumbnail = first + len(tasks)
    tasks.append({"type": "thumbnail_generate", "data": data})
    if kind is Kind.VIDEO:
        tasks.append({"type": "preview_generate", "data": data, "after": [thumbnail]})
    return tasks

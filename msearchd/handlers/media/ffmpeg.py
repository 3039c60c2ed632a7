"""Running ffmpeg for a task: its own progress output becomes the task's progress, and a cancel
stops it before the task ends.

The system's `ffmpeg` is preferred to the one the imageio-ffmpeg wheel ships: the system's gets the
distribution's security fixes and codecs, and the administrator chose it. The wheel's binary makes
`pip install 'msearchd[media]'` enough where there is none.
"""

from __future__ import annotations

import functools
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from msearchd.handlers import TaskCancelled, TaskContext, TaskFailed

# How often a running ffmpeg is checked for a cancel.
POLL_SECONDS = 0.1
# The shortest time between two progress reports of a task.
REPORT_SECONDS = 0.5
# How long ffmpeg gets to end on SIGTERM before it is killed.
TERM_SECONDS = 1.0


@functools.cache
def executable() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise TaskFailed("no ffmpeg: install the system's ffmpeg, or pip install 'msearchd[media]'") from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@dataclass(frozen=True, slots=True)
class Probe:
    duration: float | None  # seconds; None when the container does not say
    has_video: bool
    has_audio: bool


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe(path: Path) -> Probe:
    """What ffmpeg reads in the file's header; TaskFailed, with ffmpeg's reason, if it reads nothing."""
    proc = subprocess.run(
        [executable(), "-hide_banner", "-nostdin", "-i", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    text = proc.stderr
    streams = [line for line in text.splitlines() if line.strip().startswith("Stream #")]
    has_video = any(": Video: " in s and "attached pic" not in s for s in streams)
    has_audio = any(": Audio: " in s for s in streams)
    if not streams:
        reason = last_line(text).removeprefix(f"{path}: ")
        raise TaskFailed(f"{path}: not a video or audio file ffmpeg can read ({reason})")
    match = _DURATION.search(text)
    duration = None
    if match:
        h, m, s = match.groups()
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    return Probe(duration or None, has_video, has_audio)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run(ctx: TaskContext, args: list[str], duration: float | None, operation: str) -> None:
    """Run `ffmpeg args`, reporting its progress through `duration` seconds of input as the task's.

    ffmpeg is started by this worker, in its process group: the pool's signals reach it too. A cancel
    seen here stops it first, so that the task ends within the grace period with nothing left running.
    ffmpeg's messages go to the task's log; the last one is the error when it fails.
    """
    _ = ctx.cancelled  # checked below: the handler stops ffmpeg itself rather than being interrupted
    log = Path(ctx.log_path)
    with log.open("ab") as log_file:
        start = log_file.tell()
        proc = subprocess.Popen(
            [
                executable(),
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-nostats",
                "-progress",
                "pipe:1",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    assert proc.stdout is not None
    ctx.progress(0.0, operation)
    fd = proc.stdout.fileno()
    pending = b""
    last_report = time.monotonic()
    done_us = 0
    try:
        while True:
            if ctx.cancelled:
                stop(proc)
                raise TaskCancelled("cooperative")
            ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                key, _, value = line.decode(errors="replace").partition("=")
                if key == "out_time_us" and value.strip().isdigit():
                    done_us = int(value)
            now = time.monotonic()
            if duration and now - last_report >= REPORT_SECONDS:
                last_report = now
                ctx.progress(min(0.99, done_us / 1e6 / duration), operation)
        code = proc.wait()
    finally:
        if proc.returncode is None:
            stop(proc)
        proc.stdout.close()
        written = _written_since(log, start)
        if not written and start == 0:
            log.unlink(missing_ok=True)  # ffmpeg said nothing: no empty log, as for a silent command
    if ctx.cancelled:
        raise TaskCancelled("sigterm" if code == -signal.SIGTERM or code == 255 else "cooperative")
    if code != 0:
        raise TaskFailed(f"ffmpeg failed ({last_line(written)})")


def _written_since(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End ffmpeg: SIGTERM lets it close its files; SIGKILL if it does not end soon."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(TERM_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

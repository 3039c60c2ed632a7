"""The built-in media handlers against a real daemon, on media made here: Pillow pictures (one turned
by its EXIF orientation), ffmpeg's test pattern as video and a sine tone as sound, and broken files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image
from support import gone

FFMPEG = shutil.which("ffmpeg")
if FFMPEG is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("the media tests need ffmpeg")
    pytest.skip("no ffmpeg on PATH to make test videos with", allow_module_level=True)

ORIENTATION = 0x0112
ROTATED_90 = 6  # EXIF: turn 90 degrees clockwise to view


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A folder like a user's: photos, a video, recordings, and files that are not what they say."""
    root = tmp_path_factory.mktemp("library")
    (root / "photos" / "2024").mkdir(parents=True)
    (root / "sound").mkdir()
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90
    Image.new("RGB", (640, 480), (200, 40, 40)).save(root / "photos" / "sideways.jpg", exif=exif)
    Image.new("RGBA", (300, 200), (0, 120, 0, 128)).save(root / "photos" / "2024" / "leaf.png")
    Image.new("RGB", (120, 90), (0, 0, 200)).save(root / "photos" / "sky.webp")
    Image.new("P", (64, 64), 3).save(root / "photos" / "dot.gif")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=4:size=320x240:rate=25",
        "-pix_fmt",
        "yuv420p",
        str(root / "clip.mp4"),
    )
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", str(root / "sound" / "tone.wav"))
    shutil.copy(root / "sound" / "tone.wav", root / "sound" / "voice-memo.dat")  # a WAV by content
    whole = (root / "photos" / "sideways.jpg").read_bytes()
    (root / "photos" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "photos" / "empty.jpg").write_bytes(b"")
    (root / "fake.mp4").write_text("a text file, named like a video\n")
    return root


def copy_of(library: Path, tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    shutil.copytree(library, root)
    return root


def finished(client, ids, timeout=120):
    done = client.wait(ids, timeout=timeout)
    assert not done["timed_out"], "tasks did not end in time"
    return done["tasks"]


def scan(client, root: Path, **submit) -> dict:
    (task,) = finished(client, [client.submit("file_scan", {"path": str(root)}, **submit)["id"]])
    assert task["status"] == "completed", task["error"]
    return task


def everything(client) -> list[dict]:
    return client.list(limit=1000)


EXPECTED_CHAINS = {
    # file: {type: (priority, [types it depends on])}
    "photos/sideways.jpg": {"image_preprocess": (7, []), "thumbnail_generate": (9, [])},
    "photos/2024/leaf.png": {"image_preprocess": (7, []), "thumbnail_generate": (9, [])},
    "photos/sky.webp": {"image_preprocess": (7, []), "thumbnail_generate": (9, [])},
    "photos/dot.gif": {"image_preprocess": (7, []), "thumbnail_generate": (9, [])},
    "photos/truncated.jpg": {"image_preprocess": (7, []), "thumbnail_generate": (9, [])},
    "clip.mp4": {
        "video_preprocess": (7, []),
        "thumbnail_generate": (9, []),
        "preview_generate": (10, ["thumbnail_generate"]),
    },
    "sound/tone.wav": {"audio_preprocess": (7, []), "preview_generate": (10, [])},
    "sound/voice-memo.dat": {"audio_preprocess": (7, []), "preview_generate": (10, [])},
}


def chains(tasks: list[dict], root: Path) -> dict[str, dict[str, tuple[int, list[str]]]]:
    type_of = {t["id"]: t["type"] for t in tasks}
    out: dict[str, dict[str, tuple[int, list[str]]]] = {}
    for t in tasks:
        if t["type"] == "file_scan":
            continue
        rel = str(Path(t["data"]["path"]).relative_to(root))
        out.setdefault(rel, {})[t["type"]] = (t["priority"], sorted(type_of[d] for d in t["depends_on"]))
    return out


def test_a_scan_queues_each_media_file_s_chain_and_the_handlers_make_what_they_should(
    make_daemon, library, tmp_path
):
    root = copy_of(library, tmp_path)
    d = make_daemon(workers=2)
    with d.client() as c:
        task = scan(c, root)
        result = task["result"]
        assert result["files"] == 10
        assert result["folders"] == 4
        assert result["queued_files"] == 8
        assert result["not_media"] == 2  # the empty file and the text named .mp4
        assert (
            "no handler is configured for file_embed_audio, file_embed_image, file_embed_video"
            in (result["embeddings"])
        )
        tasks = [t for t in everything(c) if t["type"] != "file_scan"]
        assert chains(tasks, root) == EXPECTED_CHAINS
        assert result["queued_tasks"] == len(tasks)
        ended = {t["id"]: t for t in finished(c, [t["id"] for t in tasks])}

    by_file = {}
    for t in ended.values():
        by_file.setdefault(str(Path(t["data"]["path"]).relative_to(root)), {})[t["type"]] = t
    # The truncated photo fails its own tasks, with a reason; nothing else does.
    for t in by_file.pop("photos/truncated.jpg").values():
        assert t["status"] == "failed"
        assert t["error"].startswith(f"{root}/photos/truncated.jpg: cannot decode the image")
    for tasks_of_file in by_file.values():
        for t in tasks_of_file.values():
            assert t["status"] == "completed", (t["type"], t["data"]["path"], t["error"])

    logs = list((d.state_dir / "logs").glob("task_*.log"))
    assert not [log.name for log in logs if log.stat().st_size == 0]  # ffmpeg said nothing: no log
    cache = d.state_dir / "media"
    assert not list(cache.rglob(".part-*"))  # no temporary file or folder left, failed tasks' neither
    thumbs = {
        f: ts["thumbnail_generate"]["result"] for f, ts in by_file.items() if "thumbnail_generate" in ts
    }
    assert set(thumbs) == {
        "photos/sideways.jpg",
        "photos/2024/leaf.png",
        "photos/sky.webp",
        "photos/dot.gif",
        "clip.mp4",
    }
    for made in thumbs.values():
        path = Path(made["thumbnail"])
        assert path.is_relative_to(cache / "thumbnails")
        assert path.stat().st_size == made["bytes"]
        with Image.open(path) as img:
            assert img.format == "WEBP"
            assert max(img.size) <= 256
    with Image.open(thumbs["photos/sideways.jpg"]["thumbnail"]) as img:
        assert img.size == (192, 256)  # 640x480 stored sideways: upright it is portrait
    with Image.open(thumbs["photos/2024/leaf.png"]["thumbnail"]) as img:
        assert img.size == (256, 171)
    # Named by content: the same picture in two places has one thumbnail.
    assert Path(thumbs["photos/sky.webp"]["thumbnail"]).name.startswith(
        by_file["photos/sky.webp"]["thumbnail_generate"]["data"]["digest"]
    )

    video_preview = by_file["clip.mp4"]["preview_generate"]["result"]
    with Image.open(video_preview["preview"]) as img:
        assert img.format == "WEBP"
        assert img.n_frames == video_preview["frames"] > 1
        assert img.size[1] == 144
    for memo in ("sound/tone.wav", "sound/voice-memo.dat"):
        with Image.open(by_file[memo]["preview_generate"]["result"]["preview"]) as img:
            assert img.format == "PNG"
            assert img.size == (640, 120)
        segments = Path(by_file[memo]["audio_preprocess"]["result"]["segments_dir"])
        (wav,) = segments.iterdir()
        out = subprocess.run([FFMPEG, "-hide_banner", "-i", str(wav)], capture_output=True, text=True)
        assert "16000 Hz, mono" in out.stderr
    frames = by_file["clip.mp4"]["video_preprocess"]["result"]
    assert frames["frames"] == 4  # 4 seconds at 1 frame a second
    for jpg in Path(frames["frames_dir"]).iterdir():
        with Image.open(jpg) as img:
            img.load()
    with Image.open(by_file["photos/sideways.jpg"]["image_preprocess"]["result"]["input"]) as img:
        assert (img.size, img.mode) == ((384, 512), "RGB")  # upright, fitted in 512


def test_a_rescan_queues_nothing_and_a_changed_file_is_queued_again(make_daemon, library, tmp_path):
    root = copy_of(library, tmp_path)
    d = make_daemon(workers=2)
    with d.client() as c:
        with c.events(types=["file_scan"]) as stream:
            first = scan(c, root)["result"]
            progress = []
            for event in stream:
                if event["event"] == "completed":
                    break
                if event["event"] == "progress":
                    progress.append(event)
        assert progress[0]["current_operation"] == f"reading {root} (0 folders, 0 files seen)"
        assert progress[-1]["current_operation"] == f"read {root} (4 folders, 10 files)"
        before = len(everything(c))
        again = scan(c, root)["result"]
        assert (again["queued_files"], again["queued_tasks"], again["unchanged"]) == (0, 0, 8)
        assert len(everything(c)) == before + 1  # the scan itself
        # Touched, same content: read again, not queued again.
        os.utime(root / "clip.mp4", ns=(time.time_ns(), time.time_ns() + 10**9))
        assert scan(c, root)["result"]["queued_tasks"] == 0
        Image.new("RGB", (50, 50), (1, 2, 3)).save(root / "photos" / "2024" / "leaf.png")
        (root / "sound" / "tone.wav").unlink()
        known = {t["id"] for t in everything(c)}
        changed = scan(c, root)["result"]
        assert (changed["queued_files"], changed["queued_tasks"], changed["gone"]) == (1, 2, 1)
        new = [t for t in everything(c) if t["type"] != "file_scan" and t["id"] not in known]
        assert {t["type"] for t in new} == {"image_preprocess", "thumbnail_generate"}
        assert all(t["data"]["path"] == str(root / "photos" / "2024" / "leaf.png") for t in new)
        assert first["queued_tasks"] == before - 1


def test_a_file_that_changes_again_before_its_tasks_ran_supersedes_them(make_daemon, library, tmp_path, fifo):
    """The image types may run one at a time, and one task of each waits on a pipe: the tasks a scan
    queues for pictures wait. A second scan, after a picture changed, cancels that picture's."""
    root = tmp_path / "pics"
    root.mkdir()
    Image.new("RGB", (80, 60), (9, 9, 9)).save(root / "a.png")
    Image.new("RGB", (80, 60), (7, 7, 7)).save(root / "b.png")
    d = make_daemon(workers=3, config_extra="[type_limits]\nimage_preprocess = 1\nthumbnail_generate = 1\n")
    gates = [fifo("gate1"), fifo("gate2")]
    with d.client() as c:
        holders = [
            c.submit(kind, {"path": str(gate)}, priority=0)["id"]
            for kind, gate in zip(("image_preprocess", "thumbnail_generate"), gates, strict=True)
        ]
        # Both hold their type's one place: a wait sees it whenever they got it, where a stream
        # opened after the submits could miss their `started`.
        assert not c.wait(holders, statuses=["running"], timeout=20)["timed_out"]
        first = scan(c, root, priority=0)["result"]
        assert first["queued_tasks"] == 4
        old = {t["id"]: t for t in everything(c) if t["type"] != "file_scan" and t["id"] not in holders}
        assert {t["status"] for t in old.values()} == {"pending"}
        Image.new("RGB", (80, 60), (200, 9, 9)).save(root / "a.png")
        second = scan(c, root, priority=0)["result"]
        assert (second["queued_files"], second["superseded"]) == (1, 2)
        for task_id, task in old.items():
            now = c.get(task_id)
            if task["data"]["path"].endswith("a.png"):
                assert (now["status"], now["stop_reason"]) == ("cancelled", "not_started")
            else:
                assert now["status"] == "pending"


def test_cancelling_a_running_video_preprocess_stops_its_ffmpeg(make_daemon, tmp_path):
    long_video = tmp_path / "long.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=duration=3600:size=64x48:rate=1", "-pix_fmt", "yuv420p", str(long_video)
    )
    d = make_daemon(workers=1, grace=5.0)
    with d.client() as c:
        task = c.submit("video_preprocess", {"path": str(long_video), "fps": 30})
        with c.events(task_ids=[task["id"]]) as stream:
            for event in stream:
                if event["event"] == "progress" and event["progress"] > 0:
                    break
        running = c.get(task["id"])
        assert running["current_operation"] == "frames of long.mp4"
        worker = psutil.Process(running["worker_pid"])
        (proc,) = [p for p in worker.children() if p.name().startswith("ffmpeg")]
        assert ffmpeg_of(d, task["id"]) == [proc.pid]
        answer = c.cancel(task["id"], running=True)
        assert answer["task"]["status"] == "cancelled"
        assert answer["task"]["stop_reason"] in ("cooperative", "sigterm")
        assert gone(proc.pid)
        assert not ffmpeg_of(d, task["id"])  # nor any other ffmpeg it started
        assert not list((d.state_dir / "media").glob("frames/*/*-fps30"))


def ffmpeg_of(daemon, task_id: str) -> list[int]:
    """The ffmpeg processes that run for the daemon's task: they inherit its id and the daemon's state
    folder in their environment (another daemon on the machine has a task of that id too)."""
    found = []
    state_dir = str(daemon.state_dir.resolve())
    for proc in psutil.process_iter(["name"]):
        try:
            if not proc.info["name"].startswith("ffmpeg"):
                continue
            env = proc.environ()
            if env.get("MSEARCH_TASK_ID") == task_id and env.get("MSEARCH_STATE_DIR") == state_dir:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("fake.mp4", "not an image, video or audio file (by its content)"),
        ("photos/empty.jpg", "an empty file"),
        ("photos/nothing-here.jpg", "no such file"),
        ("sound/tone.wav", "a recording has no thumbnail"),
    ],
)
def test_a_file_a_handler_cannot_use_fails_its_task_saying_why(client, library, name, error):
    (done,) = finished(client, [client.submit("thumbnail_generate", {"path": str(library / name)})["id"]])
    assert done["status"] == "failed"
    assert done["error"] == f"{library / name}: {error}" or done["error"].startswith(
        f"{library / name}: {error}"
    )


def test_a_task_believes_the_scan_s_kind_of_a_file_until_the_file_changes(client, library, tmp_path):
    """The handlers do not read a file's first bytes again for what the scan found in them, unless the
    file changed since: then its content says what it is."""
    from msearchd.handlers.media.cache import file_digest

    picture = copy_of(library, tmp_path) / "photos" / "sky.webp"

    def as_scanned(kind: str) -> dict:
        st = picture.stat()
        return {
            "path": str(picture),
            "kind": kind,
            "digest": file_digest(picture),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }

    # A scan that had called it a recording is believed while the file is unchanged.
    (believed,) = finished(client, [client.submit("thumbnail_generate", as_scanned("audio"))["id"]])
    assert believed["status"] == "failed"
    assert believed["error"] == f"{picture}: a recording has no thumbnail (its preview is a waveform picture)"
    stale = as_scanned("audio")
    Image.new("RGB", (200, 100), (9, 9, 9)).save(picture)
    os.utime(picture, ns=(stale["mtime_ns"] + 10**9, stale["mtime_ns"] + 10**9))
    (looked_at,) = finished(client, [client.submit("thumbnail_generate", stale)["id"]])
    assert looked_at["status"] == "completed", looked_at["error"]
    with Image.open(looked_at["result"]["thumbnail"]) as thumb:
        assert thumb.format == "WEBP"
    # A kind the scan never gives, or none, is found from the content.
    for kind in ("document", ["image"], None):
        data = as_scanned("image")
        data["kind"] = kind
        (done,) = finished(client, [client.submit("thumbnail_generate", data)["id"]])
        assert done["status"] == "completed", (kind, done["error"])


def test_without_the_media_extra_a_media_type_fails_saying_what_to_install(make_daemon, tmp_path, library):
    hidden = tmp_path / "no-pillow" / "PIL"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('Pillow is not installed here')\n")
    tests = Path(__file__).parent
    d = make_daemon(workers=1, extra_env={"PYTHONPATH": f"{hidden.parent}:{tests}"})
    with d.client() as c:
        (done,) = finished(c, [c.submit("thumbnail_generate", {"path": str(library / "clip.mp4")})["id"]])
    assert (done["status"], done["error"]) == (
        "failed",
        "the media task types need the media extra: pip install 'msearchd[media]'",
    )


def test_msearchctl_scan_queues_a_scan_of_the_folder_it_names_from_where_it_runs(daemon, library):
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "msearchctl"), "scan", "photos", "--priority", "2"],
        cwd=library,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    with daemon.client() as c:
        task = c.get(ran.stdout.strip())
        assert (task["type"], task["data"], task["priority"]) == (
            "file_scan",
            {"path": str(library / "photos")},
            2,
        )
        (done,) = finished(c, [task["id"]])
    assert done["result"]["files"] == 6
    assert done["current_operation"] == f"read {library / 'photos'} (2 folders, 6 files)"
    refused = daemon.ctl("scan", str(library / "clip.mp4"))
    assert refused.returncode == 2
    assert "is not a folder" in refused.stderr


def test_embeddings_are_queued_after_the_preprocessing_where_a_handler_is_configured(make_daemon, library):
    d = make_daemon(workers=1, config_extra='file_embed_image = "handlers:noop"\n')
    with d.client() as c:
        result = scan(c, library / "photos" / "2024")["result"]
        tasks = {t["type"]: t for t in everything(c)}
    assert result["embeddings"].endswith(
        "configured for file_embed_audio, file_embed_video (msearchd has no built-in model)"
    )
    assert tasks["file_embed_image"]["priority"] == 3
    assert tasks["file_embed_image"]["depends_on"] == [tasks["image_preprocess"]["id"]]
    assert tasks["file_embed_image"]["data"]["path"] == str(library / "photos" / "2024" / "leaf.png")


def test_a_cancelled_scan_keeps_what_it_queued_and_the_next_scan_queues_the_rest(make_daemon, tmp_path):
    root = tmp_path / "many"
    folders, per_folder = 100, 100
    for f in range(folders):
        (root / f"{f:02d}").mkdir(parents=True)
        for i in range(per_folder):
            (root / f"{f:02d}" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG by its first bytes
    d = make_daemon(workers=1)
    with d.client() as c:
        # Subscribed before the submit: no report of the scan, nor its end, can come before the stream.
        with c.events(types=["file_scan"]) as stream:
            task = c.submit("file_scan", {"path": str(root)})
            # A report after the first (REPORT_SECONDS in): files were seen, and their tasks queued.
            for event in stream:
                assert event["event"] != "completed", "the scan ended before the test could cancel it"
                operation = event.get("current_operation") or ""
                if operation.startswith("reading ") and " 0 files seen" not in operation:
                    break
        cancelled = c.cancel(task["id"], running=True)["task"]
        assert (cancelled["status"], cancelled["stop_reason"]) == ("cancelled", "cooperative")
        first = c.count(task_type="image_preprocess")
        assert 0 < first < folders * per_folder
        rest = scan(c, root, priority=0)["result"]
        assert rest["queued_files"] == folders * per_folder - first
        assert rest["unchanged"] == first
        assert c.count(task_type="image_preprocess") == folders * per_folder


def test_a_truncated_video_fails_each_of_its_tasks_with_ffmpeg_s_reason(client, library, tmp_path):
    whole = (library / "clip.mp4").read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(whole[:2000])
    ids = [
        client.submit(t, {"path": str(broken)})["id"]
        for t in ("thumbnail_generate", "video_preprocess", "preview_generate")
    ]
    for done in finished(client, ids):
        assert done["status"] == "failed"
        assert done["error"] == (
            f"{broken}: not a video or audio file ffmpeg can read (Invalid data found when processing input)"
        )

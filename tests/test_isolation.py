"""What a task and the daemon's children may not reach: the daemon's folder, its secrets, planted files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msearchd.errors import InvalidArgument

# Imported in place of the standard json module, it records who imported it, then hands over the real one.
PLANTED_JSON = """
import os, sys
_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "planted-code-ran"), "a") as _f:
    _f.write(f"json.py in {os.getpid()}\\n")
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules["json"]
import json as _json
sys.modules["json"] = _json
"""

PLANTED_HANDLER = """
import os

def run(ctx, data):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "planted-code-ran"), "a") as f:
        f.write(f"evilmod saw {data}\\n")

def plugged(ctx, data):
    ctx.set_operation("plugged in by an entry point")
"""


def plant_package(folder: Path, entry_points: str) -> None:
    """A module `evilmod` and an installed distribution's metadata naming it for handler types."""
    folder.mkdir(exist_ok=True)
    (folder / "evilmod.py").write_text(PLANTED_HANDLER)
    dist = folder / "evil-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[msearchd.handlers]\n{entry_points}")


def finished(client, task):
    result = client.wait([task["id"]], timeout=20)
    assert not result["timed_out"]
    return result["tasks"][0]


def test_code_planted_in_the_daemon_s_folder_never_runs(make_daemon, tmp_path):
    """A json.py and a distribution claiming the built-in `command` type, where msearchd is started."""
    folder = tmp_path / "started-here"
    plant_package(folder, "command = evilmod:run\n")
    (folder / "json.py").write_text(PLANTED_JSON)
    d = make_daemon(workers=1, cwd=folder)
    with d.client() as c:
        done = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo real"]}))
    assert (done["status"], done["error"]) == ("completed", None)
    assert Path(done["log_path"]).read_text() == "real\n"
    assert not (folder / "planted-code-ran").exists()


def test_an_installed_entry_point_adds_types_but_cannot_replace_a_built_in(make_daemon, tmp_path):
    installed = tmp_path / "site"
    plant_package(installed, "command = evilmod:run\nplugged = evilmod:plugged\n")
    d = make_daemon(workers=1, extra_env={"PYTHONPATH": f"{installed}{os.pathsep}{Path(__file__).parent}"})
    with d.client() as c:
        plugged = finished(c, c.submit("plugged"))
        command = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo built-in"]}))
    assert (plugged["status"], plugged["current_operation"]) == ("completed", "plugged in by an entry point")
    assert command["status"] == "completed"
    assert Path(command["log_path"]).read_text() == "built-in\n"
    assert not (installed / "planted-code-ran").exists()


def test_a_configured_handler_may_replace_a_built_in(make_daemon, tmp_path):
    installed = tmp_path / "site"
    plant_package(installed, "")
    d = make_daemon(
        workers=1,
        config_extra='command = "evilmod:run"\n',  # still under [handlers]
        extra_env={"PYTHONPATH": f"{installed}{os.pathsep}{Path(__file__).parent}"},
    )
    with d.client() as c:
        assert finished(c, c.submit("command", {"anything": 1}))["status"] == "completed"
    assert (installed / "planted-code-ran").read_text() == "evilmod saw {'anything': 1}\n"


def test_a_relative_pythonpath_entry_is_taken_from_the_daemon_s_folder(make_daemon, tmp_path):
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "localmod.py").write_text(
        "def run(ctx, data):\n    ctx.set_operation('found ' + __file__)\n"
    )
    d = make_daemon(
        workers=1,
        cwd=folder,
        config_extra='local = "localmod:run"\n',
        extra_env={"PYTHONPATH": f"src{os.pathsep}{Path(__file__).parent}"},
    )
    with d.client() as c:
        done = finished(c, c.submit("local"))
    assert (done["status"], done["current_operation"]) == ("completed", f"found {folder}/src/localmod.py")


def test_tasks_do_not_see_the_http_token(make_daemon):
    d = make_daemon(workers=1, extra_env={"MSEARCH_HTTP_TOKEN": "s3cret-token"})
    with d.client() as c:
        script = "env; echo ${MSEARCH_HTTP_TOKEN-unset}"
        done = finished(c, c.submit("command", {"argv": ["sh", "-c", script]}))
    log = Path(done["log_path"]).read_text()
    assert "MSEARCH_TASK_ID=" in log  # the task's own environment is there
    assert "s3cret-token" not in log
    assert log.splitlines()[-1] == "unset"


def test_a_bare_name_runs_from_path_only(make_daemon, tmp_path):
    folder = tmp_path / "started-here"
    folder.mkdir()
    tool = folder / "othertool"
    tool.write_text(f"#!/bin/sh\necho ran > {folder}/tool-ran\n")
    tool.chmod(0o755)
    d = make_daemon(workers=1, cwd=folder)
    with d.client() as c:
        plain = finished(c, c.submit("command", {"argv": ["othertool"]}))
        # An empty PATH entry means the current folder to a shell: not here.
        empty_entry = finished(c, c.submit("command", {"argv": ["othertool"], "env": {"PATH": ":/usr/bin"}}))
    for done in (plain, empty_entry):
        assert (done["status"], done["error"]) == ("failed", "command not found: othertool")
    assert not (folder / "tool-ran").exists()


@pytest.mark.parametrize("cwd", [None, "/"], ids=["spawn", "with-cwd"])
def test_a_program_installed_after_a_failed_lookup_is_found(make_daemon, tmp_path, cwd):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    d = make_daemon(workers=1)  # one worker: both lookups in the same process
    data = {"argv": ["newtool"], "env": {"PATH": f"{bin_dir}:/usr/bin:/bin"}}
    if cwd:
        data["cwd"] = cwd
    with d.client() as c:
        before = finished(c, c.submit("command", data))
        assert (before["status"], before["error"]) == ("failed", "command not found: newtool")
        tool = bin_dir / "newtool"
        tool.write_text("#!/bin/sh\necho installed\n")
        tool.chmod(0o755)
        after = finished(c, c.submit("command", data))
    assert after["worker_pid"] == before["worker_pid"]
    assert after["status"] == "completed"
    assert Path(after["log_path"]).read_text() == "installed\n"


def test_program_lookup_skips_the_current_folder(tmp_path, monkeypatch):
    from msearchd.handlers.command import find_program

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").write_text("#!/bin/sh\n")
    (tmp_path / "here").chmod(0o755)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "sub" / "tool").chmod(0o755)
    for search_path in ("", ":", ".", "sub"):
        with pytest.raises(FileNotFoundError):
            find_program("here" if search_path != "sub" else "tool", search_path)
    assert find_program("tool", f"/nonexistent:{tmp_path}/sub") == f"{tmp_path}/sub/tool"
    assert find_program("./here", "") == "./here"  # a name with a slash is a path, as in a shell


def test_program_lookup_skips_folders_and_files_that_cannot_run(tmp_path):
    from msearchd.handlers.command import find_program

    folders = [tmp_path / name for name in ("folder", "plain", "runs")]
    for folder in folders:
        folder.mkdir()
    (folders[0] / "tool").mkdir()  # searchable, but not a program
    (folders[1] / "tool").write_text("#!/bin/sh\n")  # not executable
    (folders[2] / "tool").write_text("#!/bin/sh\n")
    (folders[2] / "tool").chmod(0o755)
    search_path = ":".join(map(str, folders))
    assert find_program("tool", search_path) == f"{folders[2]}/tool"
    with pytest.raises(FileNotFoundError):
        find_program("tool", ":".join(map(str, folders[:2])))


def test_a_missing_folder_is_named_as_such(client, tmp_path):
    missing = str(tmp_path / "no-such-folder")
    done = finished(client, client.submit("command", {"argv": ["true"], "cwd": missing}))
    assert (done["status"], done["error"]) == ("failed", f"folder not found: {missing}")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    done = finished(client, client.submit("command", {"argv": ["true"], "cwd": str(a_file)}))
    assert (done["status"], done["error"]) == ("failed", f"not a folder: {a_file}")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"argv": [""]}, "argv[0]"),
        ({"argv": ["echo", "a\0b"]}, "NUL"),
        ({"argv": ["ech\0o"]}, "NUL"),
        ({"argv": ["true"], "cwd": "/tmp\0x"}, "NUL"),
        ({"argv": ["true"], "cwd": ""}, "cwd"),
        ({"argv": ["true"], "env": {"A=B": "x"}}, "'A=B' is not a variable name"),
        ({"argv": ["true"], "env": {"": "x"}}, "'' is not a variable name"),
        ({"argv": ["true"], "env": {"A\0": "x"}}, "is not a variable name"),
        ({"argv": ["true"], "env": {"A": "x\0y"}}, "the value of A holds a NUL byte"),
        ({"argv": ["true"], "env": {"MSEARCH_TASK_ID": "task_1"}}, "must not set MSEARCH_TASK_ID"),
        ({"argv": ["true"], "env": {"MSEARCH_WORKER_OF": "/"}}, "must not set MSEARCH_WORKER_OF"),
    ],
)
def test_a_command_that_cannot_start_is_refused_at_submit(client, data, says):
    with pytest.raises(InvalidArgument, match="command task") as refused:
        client.submit("command", data)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)
    assert client.count() == 0


def test_planted_log_links_are_not_followed(make_daemon, tmp_path):
    """A symbolic link or a second name where a task's log goes: the task fails, the target is untouched."""
    d = make_daemon(workers=1, start=False)
    logs = d.state_dir / "logs"
    logs.mkdir(parents=True)
    targets = [tmp_path / f"target{i}" for i in (1, 2, 3)]
    for target in targets:
        target.write_text("precious\n")
    (logs / "task_1.log").symlink_to(targets[0])
    os.link(targets[1], logs / "task_2.log")
    (logs / "task_3.log").symlink_to(targets[2])
    d.start()
    with d.client() as c:
        first = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo leaked"]}))
        second = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo leaked"]}))
        third = finished(c, c.submit("fail", {"exception": True}))  # a traceback goes to the log
        fourth = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo fine"]}))
    assert (first["status"], first["error"]) == (
        "failed",
        f"the task's log {logs}/task_1.log is a symbolic link: not followed",
    )
    assert (second["status"], second["error"]) == (
        "failed",
        f"the task's log {logs}/task_2.log is not a plain file of its own: not written",
    )
    assert third["status"] == "failed"
    assert [t.read_text() for t in targets] == ["precious\n"] * 3
    assert Path(fourth["log_path"]).read_text() == "fine\n"


def test_the_http_shim_does_not_import_from_the_daemon_s_folder(make_daemon, tmp_path):
    from test_http import start_with_shim

    folder = tmp_path / "started-here"
    folder.mkdir()
    (folder / "json.py").write_text(PLANTED_JSON)
    _, shim = start_with_shim(make_daemon, cwd=folder)
    assert shim.get("/tasks").status == 200
    assert not (folder / "planted-code-ran").exists()
    assert Path(f"/proc/{shim.pid}/cwd").resolve() != folder.resolve()


@pytest.mark.parametrize("planted", ["hard link", "symbolic link"])
def test_a_replaced_spare_log_is_not_written_through(make_daemon, tmp_path, planted):
    """A worker's spare log (logs/.spare/<pid>) replaced by a link elsewhere: the next command's log is
    a file of its own, and the link's target is untouched."""
    d = make_daemon(workers=1)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    with d.client() as c:
        first = finished(c, c.submit("command", {"argv": ["true"]}))
        spare = d.state_dir / "logs" / ".spare" / str(first["worker_pid"])
        assert spare.exists()
        spare.unlink()
        if planted == "hard link":
            os.link(victim, spare)
        else:
            spare.symlink_to(victim)
        second = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo output"]}))
        third = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo more"]}))
    assert second["worker_pid"] == first["worker_pid"]
    assert victim.read_text() == "precious\n"
    assert (second["status"], Path(second["log_path"]).read_text()) == ("completed", "output\n")
    assert (third["status"], Path(third["log_path"]).read_text()) == ("completed", "more\n")
    assert Path(second["log_path"]).stat().st_nlink == 1


def test_msearchctl_says_in_one_sentence_why_a_command_is_refused(daemon):
    answer = daemon.ctl("tasks", "add", "command", "--", "")
    assert answer.returncode != 0
    assert "Traceback" not in answer.stderr
    assert "argv[0]" in answer.stderr and len(answer.stderr.strip().splitlines()) == 1, answer.stderr


def test_a_relative_state_folder_is_taken_from_the_daemon_s_folder(make_daemon, tmp_path):
    """Workers run elsewhere: the paths they are given must not depend on the daemon's folder."""
    folder = tmp_path / "started-here"
    folder.mkdir()
    d = make_daemon(workers=1, cwd=folder, extra_args=("--state-dir", "relative-state"))
    with d.client() as c:
        done = finished(c, c.submit("command", {"argv": ["sh", "-c", "echo out; echo $MSEARCH_STATE_DIR"]}))
    assert done["log_path"] == f"{folder}/relative-state/logs/{done['id']}.log"
    assert Path(done["log_path"]).read_text() == f"out\n{folder}/relative-state\n"


def test_the_http_shim_reaches_a_daemon_on_a_relative_socket_path(make_daemon, tmp_path):
    from test_http import start_with_shim

    folder = tmp_path / "started-here"
    folder.mkdir()
    _, shim = start_with_shim(make_daemon, extra=("--socket", "d.sock"), cwd=folder)
    assert (folder / "d.sock").is_socket()
    assert shim.get("/tasks").status == 200


def test_the_command_handler_under_another_name_keeps_its_markers(client):
    """`heavy` runs the command handler, unchecked at submit: a marker in data.env fails the task at
    once, saying why, with no traceback."""
    done = finished(client, client.submit("heavy", {"argv": ["true"], "env": {"MSEARCH_WORKER_OF": "/x"}}))
    assert (done["status"], done["error"]) == (
        "failed",
        "data.env of a command task must not set MSEARCH_WORKER_OF: the worker sets it",
    )
    assert done["log_path"] is None

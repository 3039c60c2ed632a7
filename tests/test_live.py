"""Seeing it live: the event stream, watch, wait, log --follow and history."""

from __future__ import annotations

import json
import os
import socket
import subprocess

from conftest import MSEARCHCTL
from support import on_terminal

from msearchd import protocol
from msearchd.store import Store


def test_watch_json_shows_each_step_in_order(daemon, fifo):
    gate = fifo("steps")
    with daemon.client() as c:
        task = c.submit("stepper", {"fifo": str(gate), "steps": 3})
    watcher = subprocess.Popen(
        [MSEARCHCTL, "tasks", "watch", task["id"], "--json"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    # Its first line tells where the task stands; the watcher subscribed before reading that.
    assert (first["event"], first["task_id"], first["progress"]) == ("state", task["id"], 0.0)
    seen = []
    with open(gate.path, "w") as steps:
        steps.write("next\n")
        steps.flush()
        for line in watcher.stdout:
            event = json.loads(line)
            assert event["task_id"] == task["id"]
            seen.append(event["event"])
            if event["event"] == "progress":
                assert event["current_operation"] == f"step {seen.count('progress')} of 3"
                if seen.count("progress") < 3:
                    steps.write("next\n")
                    steps.flush()
    assert watcher.wait(timeout=20) == 0  # ends by itself once the task finished
    assert seen[-4:] == ["progress", "progress", "progress", "completed"]


def test_events_filter_by_type_and_carry_state_changes(client, fifo):
    gate, started = fifo("gate"), fifo("started")
    with client.events(types=["command"]) as stream:
        script = f"echo up > {started}; read x < {gate}"
        held = client.submit("command", {"argv": ["sh", "-c", script]}, priority=9)
        client.submit("noop")  # another type: not in this stream
        started.read()  # it runs: a cancel now stops it with SIGTERM
        client.set_priority(client.submit("command", {"argv": ["true"]}, depends_on=[held["id"]])["id"], 1)
        client.cancel(held["id"], running=True)
        kinds = []
        for event in stream:
            assert event["type"] == "command"
            if event["event"] != "progress":  # the command's "running ..." line may come at any point
                kinds.append((event["event"], event.get("stop_reason")))
            if len(kinds) == 7:
                break
    assert kinds == [
        ("submitted", None),
        ("started", None),
        ("submitted", None),
        ("priority_changed", None),
        ("cancel_requested", None),
        ("cancelled", "not_started"),  # its dependent is cancelled in the same step, and told first
        ("cancelled", "sigterm"),
    ]


def test_stalled_subscriber_does_not_slow_the_daemon(client):
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(client.path))
    stalled.sendall(protocol.encode(protocol.request(1, "hello", {"protocol": protocol.PROTOCOL_VERSION})))
    stalled.sendall(protocol.encode(protocol.request(2, "subscribe", {})))
    assert protocol.recv_frame(stalled)["result"]["protocol"] == protocol.PROTOCOL_VERSION
    assert protocol.recv_frame(stalled)["result"] == {"subscribed": True}
    # Never read again while a task floods the stream with progress.
    tasks = [client.submit("chatty", {"reports": 30_000}) for _ in range(2)]
    done = client.wait([t["id"] for t in tasks], timeout=60)
    assert not done["timed_out"]
    assert [t["status"] for t in done["tasks"]] == ["completed", "completed"]
    # Its progress was coalesced, never its state changes: both completions are in its stream, and the
    # progress it finally reads for each task is the latest value.
    stalled.settimeout(20)
    completed, progress, last = set(), 0, {}
    while len(completed) < 2:
        event = protocol.recv_frame(stalled)["event"]
        if event["event"] == "completed":
            completed.add(event["task_id"])
        elif event["event"] == "progress":
            progress += 1
            last[event["task_id"]] = event["current_operation"]
    assert completed == {t["id"] for t in tasks}
    assert progress < 10_000  # of 60,000 reported
    assert last == {t["id"]: "report 30000" for t in tasks}
    stalled.close()


def test_log_follow_ends_when_the_task_ends(daemon, fifo):
    gate = fifo("gate")
    with daemon.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"echo first; read x < {gate}; echo second"]})
        c.wait([task["id"]], statuses=["running"], timeout=20)
    tail = subprocess.Popen(
        [MSEARCHCTL, "tasks", "log", task["id"], "--follow"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert tail.stdout is not None
    assert tail.stdout.readline() == "first\n"
    gate.write()
    assert tail.stdout.read() == "second\n"
    assert tail.wait(timeout=20) == 0
    assert daemon.ctl("tasks", "log", task["id"]).stdout == "first\nsecond\n"
    with daemon.client() as c:
        failed = c.submit("fail")
        c.wait([failed["id"]], timeout=20)
        blocked = c.submit("noop", depends_on=[failed["id"]])  # never starts: no log
    missing = daemon.ctl("tasks", "log", blocked["id"])
    assert missing.returncode == 1
    assert missing.stderr == f"msearchctl: {blocked['id']} has not started yet (blocked): no log yet\n"
    with daemon.client() as c:
        c.cancel(blocked["id"])
    never = daemon.ctl("tasks", "log", blocked["id"])
    assert (never.returncode, never.stderr) == (
        1,
        f"msearchctl: {blocked['id']} never ran (cancelled): it has no log\n",
    )


def test_log_of_a_task_that_wrote_nothing_is_empty(daemon):
    with daemon.client() as c:
        quiet = c.submit("command", {"argv": ["true"]})
        assert c.wait([quiet["id"]], timeout=20)["tasks"][0]["status"] == "completed"
    for follow in ((), ("--follow",)):
        shown = daemon.ctl("tasks", "log", quiet["id"], *follow)
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, "", ""), follow


def test_log_follow_says_so_when_the_daemon_stops_first(daemon, fifo):
    gate = fifo("gate")
    with daemon.client() as c:
        task = c.submit("command", {"argv": ["sh", "-c", f"echo first; read x < {gate}"]})
        c.wait([task["id"]], statuses=["running"], timeout=20)
    tail = subprocess.Popen(
        [MSEARCHCTL, "tasks", "log", task["id"], "--follow"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tail.stdout is not None
    assert tail.stdout.readline() == "first\n"  # following: the stream is open
    assert daemon.ctl("daemon", "stop").returncode == 0
    out, err = tail.communicate(timeout=30)
    assert (tail.returncode, out) == (3, "")
    assert err == f"msearchctl: the daemon ended the stream before {task['id']} finished; the log may go on\n"


def test_watch_that_falls_behind_says_so_and_fails(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        held = c.submit("command", {"argv": ["sh", "-c", f"read x < {gate}"]})  # the others stay queued
        c.wait([held["id"]], statuses=["running"], timeout=20)
        watch = subprocess.Popen(
            [MSEARCHCTL, "tasks", "watch"],
            env=d.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        assert json.loads(watch.stdout.readline())["task_id"] == held["id"]  # subscribed
        # More state changes in one request than a subscriber may have waiting: it is dropped.
        c.submit_many([{"type": "noop"}] * 10_001)
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 1
    assert json.loads(out.splitlines()[-1])["event"] == "overflow"
    assert (
        err == "msearchctl: fell too far behind the daemon's events, which dropped this watch; watch again\n"
    )


def test_text_from_tasks_is_shown_as_written_on_a_terminal(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    odd = "[red]bold[/red] [/x]"  # rich markup, and a closing tag that closes nothing
    with d.client() as c:
        with c.events(types=["command"]) as stream:
            failed = c.submit("command", {"argv": [odd]})
            held = c.submit("command", {"argv": ["sh", "-c", f"read x < {gate}", odd]})
            operation = None
            for event in stream:  # the running one names its argv once it has run a while
                if event["task_id"] == held["id"] and event.get("current_operation"):
                    operation = event["current_operation"]
                    break
        assert c.get(failed["id"])["error"] == f"command not found: {odd}"
    assert operation is not None and odd in operation
    for args, code, expected in (
        (("tasks", "list"), 0, [f"command not found: {odd}", operation]),
        (("tasks", "stats"), 0, [operation]),
        (("tasks", "wait", failed["id"]), 1, [f"command not found: {odd}"]),
    ):
        status, output = on_terminal([MSEARCHCTL, *args], d.env)
        assert "Traceback" not in output, output
        assert status == code, output
        for text in expected:
            assert text in output, (text, output)


def test_history_records_requests_and_who_asked(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        held = c.submit("command", {"argv": ["sh", "-c", f"read x < {gate}"]}, priority=0)
        c.wait([held["id"]], statuses=["running"], timeout=20)
        task = c.submit("fail", {"message": "nope"}, priority=9)
    ctl = subprocess.Popen(
        [MSEARCHCTL, "tasks", "priority", task["id"], "4"], env=d.env, stdout=subprocess.DEVNULL
    )
    assert ctl.wait(timeout=60) == 0
    gate.write()
    with d.client() as c:
        c.wait([task["id"]], timeout=20)
        new_id = c.retry(task["id"])["new_task_id"]
        entries = c.history(task["id"])
    events = [e["event"] for e in entries]
    assert events == ["submitted", "priority_changed", "started", "failed", "retried"]
    assert entries[0]["priority"] == 9
    change = entries[1]
    assert (change["old"], change["new"]) == (9, 4)
    assert (change["uid"], change["pid"]) == (os.getuid(), ctl.pid)
    assert (entries[4]["uid"], entries[4]["pid"]) == (os.getuid(), os.getpid())
    assert entries[3]["error"] == "nope"
    assert entries[4]["new_task_id"] == new_id
    times = [e["time"] for e in entries]
    assert times == sorted(times)
    out = d.ctl("tasks", "history", task["id"])
    assert out.returncode == 0
    assert "priority_changed     old=9 new=4 (uid" in out.stdout


def test_wait_exit_codes_and_timeout(daemon):
    ok = daemon.ctl("tasks", "add", "noop").stdout.strip()
    assert daemon.ctl("tasks", "wait", ok).returncode == 0
    failing = daemon.ctl("tasks", "add", "fail").stdout.strip()
    assert daemon.ctl("tasks", "wait", ok, failing).returncode == 1
    stuck = daemon.ctl("tasks", "add", "command", "--", "sleep", "1000").stdout.strip()
    result = daemon.ctl("tasks", "wait", stuck, "--timeout", "0.3", "--json")
    assert result.returncode == 4
    assert json.loads(result.stdout)["timed_out"] is True
    cancelled = daemon.ctl("tasks", "cancel", stuck, "--running")
    assert cancelled.returncode == 0
    assert daemon.ctl("tasks", "wait", stuck).returncode == 1


def test_progress_survives_a_restart(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("steps")
    with d.client() as c, c.events(types=["stepper"]) as stream:
        task = c.submit("stepper", {"fifo": str(gate), "steps": 2})
        with open(gate.path, "w") as steps:
            steps.write("next\n")
            steps.flush()
            assert next(e for e in stream if e["event"] == "progress")["progress"] == 0.5
            assert d.stop() == 0  # the handler is still waiting for its second step
    store = Store(d.state_dir / "tasks.db")  # what a restarted daemon starts from
    try:
        saved = store.get(int(task["id"].removeprefix("task_")))
        assert saved is not None
        assert (saved.status, saved.progress, saved.current_operation) == ("pending", 0.5, "step 1 of 2")
        assert [e["event"] for e in store.events(saved.id)] == ["requeued"]
    finally:
        store.close()

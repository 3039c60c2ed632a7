"""Keys that dedupe and supersede, operations on a selection with a dry run, pause/resume/drain."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from support import wait_started

from msearchd import protocol
from msearchd.errors import InvalidArgument
from msearchd.model import TaskStatus
from msearchd.scheduler import Scheduler
from msearchd.store import Store

UNFINISHED = ["pending", "blocked", "running"]


def unfinished_keys(c) -> list[str]:
    return [t["data"]["k"] for t in c.list(UNFINISHED, limit=10_000) if "k" in t["data"]]


# --- keys ---------------------------------------------------------------------------------------------


def test_the_database_itself_holds_one_unfinished_task_per_key(tmp_path):
    """Whatever the service checks first, a second unfinished task with the key cannot be written."""
    store = Store(tmp_path / "tasks.db")
    spec = {
        "task_type": "file_scan",
        "data": {},
        "priority": 5,
        "status": TaskStatus.PENDING,
        "created_at": 1.0,
    }
    first = store.insert_keyed("k", **spec)
    assert first is not None
    assert store.insert_keyed("k", **spec) is None
    assert store.count() == 1  # the refused one left nothing behind
    store.update(first, status=TaskStatus.RUNNING)
    assert store.insert_keyed("k", **spec) is None  # running is unfinished too
    store.update(first, status=TaskStatus.COMPLETED)
    second = store.insert_keyed("k", **spec)
    assert second is not None and store.unfinished_with_key("k").id == second
    store.close()


def test_a_key_keeps_the_unfinished_task_and_says_so(client):
    client.pause()
    first = client.submit("file_scan", {"k": "a"}, key="scan:/a")
    again = client.submit("file_scan", {"k": "a"}, key="scan:/a")
    assert first["key_outcome"] == "created"
    assert again["key_outcome"] == "kept" and again["id"] == first["id"]
    other = client.submit("file_scan", {"k": "b"}, key="scan:/b")
    assert other["id"] != first["id"]
    assert sorted(unfinished_keys(client)) == ["a", "b"]
    client.cancel(first["id"])  # finished: the key is free again
    assert client.submit("file_scan", {"k": "a"}, key="scan:/a")["key_outcome"] == "created"


def test_replace_supersedes_a_waiting_task_and_hands_over_its_dependents(client):
    client.pause()
    old = client.submit("file_scan", {"v": 1}, key="scan:/a")
    child = client.submit("thumbnail_generate", {}, depends_on=[old["id"]])
    new = client.submit("file_scan", {"v": 2}, key="scan:/a", on_conflict="replace")
    assert new["key_outcome"] == "replaced" and new["replaced"] == old["id"]
    assert new["id"] != old["id"] and new["data"] == {"v": 2}
    assert client.get(old["id"])["status"] == "cancelled"
    assert client.get(child["id"])["depends_on"] == [new["id"]]
    assert client.get(child["id"])["status"] == "blocked"
    events = [e["event"] for e in client.history(old["id"])]
    assert events == ["submitted", "cancel_requested", "cancelled", "replaced"]


def test_replace_leaves_a_running_task_unless_told(make_daemon, fifo):
    with make_daemon(workers=1).client() as c:
        gate = fifo("gate")
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]}, key="k1")
        wait_started(c, run["id"])
        kept = c.submit("command", {"argv": ["true"]}, key="k1", on_conflict="replace")
        assert kept["key_outcome"] == "kept" and kept["id"] == run["id"] and kept["status"] == "running"
        new = c.submit("command", {"argv": ["true"]}, key="k1", on_conflict="replace", running=True)
        assert new["key_outcome"] == "replaced" and new["replaced"] == run["id"]
        assert c.get(run["id"])["status"] == "cancelled"
        assert c.wait([new["id"]], timeout=20)["tasks"][0]["status"] == "completed"


def test_concurrent_submits_with_keys_leave_one_task_per_key(daemon):
    with daemon.client() as c:
        c.pause()
    keys = [f"key{i}" for i in range(10)]
    answers: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def submitter(n: int) -> None:
        try:
            with daemon.client() as c:
                start.wait(timeout=20)
                for round_ in range(5):
                    for key in keys:
                        mode = "replace" if (n + round_) % 3 == 0 else "keep"
                        answers.append(c.submit("file_scan", {"k": key}, key=key, on_conflict=mode))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with daemon.client() as c:
        assert sorted(unfinished_keys(c)) == keys
        outcomes = {a["key_outcome"] for a in answers}
        assert outcomes == {"created", "kept", "replaced"}


def test_a_resent_submit_after_a_lost_answer_makes_no_duplicate(daemon):
    with daemon.client() as c:
        c.pause()
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(daemon.socket))
    sock.sendall(protocol.encode(protocol.request(0, "hello", {"protocol": protocol.PROTOCOL_VERSION})))
    params = {"type": "file_scan", "data": {"k": "x"}, "key": "scan:/x"}
    sock.sendall(protocol.encode(protocol.request(1, "submit", params)))
    sock.close()  # the answer is lost
    with daemon.client() as c:
        deadline = time.monotonic() + 20
        while not unfinished_keys(c) and time.monotonic() < deadline:
            pass  # the first submit may still be on its way: ask again
        assert unfinished_keys(c) == ["x"]  # the daemon ran it, though nobody read the answer
        resent = c.submit("file_scan", {"k": "x"}, key="scan:/x")
        assert resent["key_outcome"] == "kept"
        assert unfinished_keys(c) == ["x"]


def test_submit_many_refuses_keys(client):
    with pytest.raises(InvalidArgument, match="takes no keys"):
        client.submit_many([{"type": "file_scan", "key": "k"}])


# --- selections ---------------------------------------------------------------------------------------


def seed(c) -> dict[str, list[str]]:
    """Paused queue with tasks of several types, priorities and data; returns ids by name."""
    c.pause()
    ids: dict[str, list[str]] = {}
    for name, task_type, prio, path in (
        ("nas_video", "file_embed_video", 3, "/mnt/nas/a.mp4"),
        ("nas_image", "file_embed_image", 4, "/mnt/nas/b.jpg"),
        ("home_video", "file_embed_video", 5, "/home/u/c.mp4"),
        ("thumb", "thumbnail_generate", 9, "/mnt/nas/a.mp4"),
        ("thumb2", "thumbnail_generate", 9, "/home/u/c.mp4"),
    ):
        ids.setdefault(name, []).append(c.submit(task_type, {"path": path, "n": 1}, priority=prio)["id"])
    return ids


def selected(c, select: dict) -> list[str]:
    answer = c.cancel_selected(select, dry_run=True)
    return sorted(i for counts in [answer["sample"]] for i in counts)


@pytest.mark.parametrize(
    ("select", "names"),
    [
        ({"types": ["file_embed_video"]}, ["nas_video", "home_video"]),
        ({"types": ["file_embed_*"]}, ["nas_video", "nas_image", "home_video"]),
        ({"types": ["file_embed_i*", "thumbnail_generate"]}, ["nas_image", "thumb", "thumb2"]),
        ({"priority": 9}, ["thumb", "thumb2"]),
        ({"priority": "3..4"}, ["nas_video", "nas_image"]),
        ({"priority": "..4"}, ["nas_video", "nas_image"]),
        ({"priority": "5.."}, ["home_video", "thumb", "thumb2"]),
        ({"where": ["path^=/mnt/nas/"]}, ["nas_video", "nas_image", "thumb"]),
        ({"where": ["path$=.mp4"]}, ["nas_video", "home_video", "thumb", "thumb2"]),
        ({"where": ["path*=/u/"]}, ["home_video", "thumb2"]),
        ({"where": ["path=/mnt/nas/b.jpg"]}, ["nas_image"]),
        ({"where": ["path!=/mnt/nas/a.mp4"]}, ["nas_image", "home_video", "thumb2"]),
        ({"where": ["n=1", "missing=1"]}, []),
        ({"types": ["file_embed_*"], "where": ["path^=/mnt/nas/"], "priority": "..3"}, ["nas_video"]),
        ({"statuses": ["pending"], "types": ["thumbnail_generate"]}, ["thumb", "thumb2"]),
        ({"statuses": ["completed"]}, []),
    ],
)
def test_each_selection_field_and_their_combinations(client, select, names):
    ids = seed(client)
    assert selected(client, select) == sorted(i for n in names for i in ids[n])


def test_ids_and_created_time_select(client):
    ids = seed(client)
    middle = client.get(ids["home_video"][0])["created_at"]
    assert selected(client, {"ids": [ids["thumb"][0], ids["nas_video"][0]]}) == sorted(
        [ids["thumb"][0], ids["nas_video"][0]]
    )
    assert selected(client, {"newer_than": middle}) == sorted(
        ids["home_video"] + ids["thumb"] + ids["thumb2"]
    )
    assert selected(client, {"older_than": middle}) == sorted(ids["nas_video"] + ids["nas_image"])
    assert len(selected(client, {"newer_than": "1h"})) == 5
    assert selected(client, {"older_than": "1d"}) == []
    assert len(selected(client, {"newer_than": "2000-01-01"})) == 5


@pytest.mark.parametrize(
    "select",
    [
        {"bogus": 1},
        {"priority": "5..3"},
        {"priority": "12"},
        {"older_than": "yesterday"},
        {"where": ["no operator"]},
        {"statuses": ["done"]},
        {"types": ["bad type"]},
    ],
)
def test_a_bad_selection_is_refused_with_a_reason(client, select):
    with pytest.raises(InvalidArgument):
        client.cancel_selected(select, dry_run=True)


def test_a_dry_run_changes_nothing_and_the_real_run_touches_exactly_those(client):
    ids = seed(client)
    child = client.submit("noop", {}, depends_on=[ids["nas_video"][0]])["id"]
    select = {"where": ["path^=/mnt/nas/"]}
    dry = client.cancel_selected(select, dry_run=True)
    assert dry["count"] == 3 and dry["dry_run"]
    assert dry["by_type"] == {
        "file_embed_video": {"pending": 1},
        "file_embed_image": {"pending": 1},
        "thumbnail_generate": {"pending": 1},
    }
    assert dry["dependents"] == 1 and dry["dependents_sample"] == [child]
    assert client.count("cancelled") == 0
    late = client.submit("file_scan", {"path": "/mnt/nas/late"})["id"]  # after the preview: left alone
    real = client.cancel_selected(dry["selection"], up_to=dry["up_to"], expect=dry["count"])
    assert real["cancelled"] == 3 and real["cancelled_dependents"] == 1
    assert real["changed_meanwhile"] is False
    assert client.get(late)["status"] == "pending"
    cancelled = {t["id"] for t in client.list("cancelled")}
    assert cancelled == {ids["nas_video"][0], ids["nas_image"][0], ids["thumb"][0], child}


def test_a_run_after_a_dry_run_says_what_changed_meanwhile(client):
    ids = seed(client)
    dry = client.cancel_selected({"types": ["thumbnail_generate"]}, dry_run=True)
    client.cancel(ids["thumb"][0])
    real = client.cancel_selected(dry["selection"], up_to=dry["up_to"], expect=dry["count"])
    assert real["cancelled"] == 1 and real["previewed"] == 2 and real["changed_meanwhile"] is True


def test_priority_of_a_whole_class_at_once(client):
    ids = seed(client)
    dry = client.set_priority_selected({"types": ["file_embed_*"]}, 11, dry_run=True)
    assert dry["count"] == 3 and client.get(ids["nas_video"][0])["priority"] == 3
    result = client.set_priority_selected({"types": ["file_embed_*"]}, 11)
    assert result["changed"] == 3
    prios = {t["type"]: t["priority"] for t in client.list("pending")}
    assert prios == {"file_embed_video": 11, "file_embed_image": 11, "thumbnail_generate": 9}
    history = client.history(ids["nas_video"][0])
    assert any(e["event"] == "priority_changed" and e["old"] == 3 and e["new"] == 11 for e in history)


def test_each_event_of_a_priority_change_over_a_selection_has_the_old_priority(client):
    """As a single change's event does: a page or a watcher can show both."""
    client.pause()
    ids = [client.submit("thumbnail_generate", priority=p)["id"] for p in (3, 7, 11, 4)]
    with client.events(types=["thumbnail_generate"]) as stream:
        done = client.set_priority_selected({"types": ["thumbnail_generate"]}, 11)
        assert done["changed"] == 3  # the one at 11 already is not changed
        events = [next(stream) for _ in range(3)]
    assert {(e["task_id"], e["event"], e["old_priority"], e["priority"]) for e in events} == {
        (ids[0], "priority_changed", 3, 11),
        (ids[1], "priority_changed", 7, 11),
        (ids[3], "priority_changed", 4, 11),
    }
    with client.events(task_ids=[ids[0]]) as stream:
        client.set_priority(ids[0], 5)
        single = next(stream)
    assert set(single) == set(events[0])  # the same fields


def test_retry_selected_failures(client):
    failed = [client.submit("fail", {"path": f"/mnt/nas/{i}"})["id"] for i in range(3)]
    other = client.submit("fail", {"path": "/home/x"})["id"]
    client.wait([*failed, other], timeout=20)
    client.pause()
    select = {"types": ["fail"], "where": ["path^=/mnt/nas/"], "newer_than": "1d"}
    dry = client.retry_selected(select, dry_run=True)
    assert dry["count"] == 3 and sorted(dry["sample"]) == sorted(failed)
    result = client.retry_selected(select)
    assert result["retried"] == 3 and sorted(t["task_id"] for t in result["tasks"]) == sorted(failed)
    assert client.get(other)["retried_as"] is None
    assert client.retry_selected(select, dry_run=True)["count"] == 0  # retried: not again


def test_cancel_all_selection_with_running(make_daemon, fifo):
    with make_daemon(workers=1).client() as c:
        gate = fifo("gate")
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})
        wait_started(c, run["id"])
        waiting = c.submit("file_scan", {})["id"]
        dry = c.cancel_selected({}, running=True, dry_run=True)
        assert dry["by_type"] == {"command": {"running": 1}, "file_scan": {"pending": 1}}
        result = c.cancel_selected({}, running=True)
        assert result["cancelled"] == 2
        assert c.get(run["id"])["status"] == "cancelled" and c.get(waiting)["status"] == "cancelled"


def test_bulk_cancels_agree_with_their_dry_run_when_selected_tasks_depend_on_each_other(client):
    """A waiting task that a cancel selects counts as cancelled by it, not as a dependent, however far
    from the task it depends on (other windows, other chunks): cancel-by-type and cancel-all are
    cancels of a selection, and each real run touches what its dry run counted."""
    client.pause()

    def queue() -> tuple[str, str]:
        root = client.submit("thumbnail_generate")["id"]
        for _ in range(2):
            client.submit_many([{"type": "thumbnail_generate"}] * 600)
        selected = client.submit("thumbnail_generate", depends_on=[root])["id"]
        return selected, client.submit("noop", depends_on=[root])["id"]  # depends on it, not selected

    select = {"types": ["thumbnail_generate"]}
    queue()
    dry = client.cancel_selected(select, dry_run=True)
    assert (dry["count"], dry["dependents"]) == (1202, 1)
    done = client.cancel_selected(dry["selection"], up_to=dry["up_to"], expect=dry["count"])
    assert (done["cancelled"], done["cancelled_dependents"], done["changed_meanwhile"]) == (1202, 1, False)

    selected, other = queue()
    assert client.cancel_selected(select, dry_run=True)["count"] == 1202
    by_type = client.cancel_by_type("thumbnail_generate")
    assert (by_type["cancelled"], by_type["total"], by_type["cancelled_dependents"]) == (1202, 1202, 1)
    assert client.get(other)["status"] == "cancelled"
    requests = [e.get("by") for e in client.history(selected) if e["event"] == "cancel_requested"]
    assert requests == ["cancel-by-type"]  # cancelled by the request, as its type

    queue()
    dry = client.cancel_selected({}, dry_run=True)
    assert (dry["count"], dry["dependents"]) == (1203, 0)
    everything = client.cancel_all()
    assert (everything["cancelled"], everything["cancelled_dependents"]) == (1203, 0)
    assert client.count(["pending", "blocked"]) == 0


def test_a_selected_dependent_cancelled_ahead_of_its_window_is_gone_from_by_its_own_dependents_once(client):
    """A cancel of a type reaches a selected task that depends on an earlier one before its own window
    does. Its dependent outside the selection is cancelled once and counted once, whether or not
    anyone listens to the cancel."""
    client.pause()
    for listening in (False, True):
        root = client.submit("thumbnail_generate")["id"]
        client.submit_many([{"type": "thumbnail_generate"}] * 1200)
        selected = client.submit("thumbnail_generate", depends_on=[root])["id"]
        # More dependents than one commit settles: the rest are settled after the windows.
        many = client.submit_many([{"type": "noop", "depends_on": [selected]}] * 1500)["task_ids"]
        last = client.submit("noop", depends_on=[many[-1]])["id"]
        with contextlib.ExitStack() as stack:
            if listening:
                stack.enter_context(client.events(types=["noop"]))
            by_type = client.cancel_by_type("thumbnail_generate")
        assert (by_type["cancelled"], by_type["cancelled_dependents"]) == (1202, 1501), listening
        ended = client.wait([*many, last], timeout=0)["tasks"]
        assert {t["status"] for t in ended} == {"cancelled"}
        assert {t["error"] for t in ended[:-1]} == {f"dependency {selected} was cancelled"}
        assert ended[-1]["error"] == f"dependency {many[-1]} was cancelled"


def test_a_cancel_of_a_type_and_one_testing_the_data_take_the_same_tasks_the_same_way(client):
    """A selection SQL tests whole (a type) is cancelled a window at a time in one statement each; one
    with a `where` on the data reads each window's tasks first. Both take every selected waiting task
    however the tasks lie (a dense run right after a sparse stretch, which widened the windows, fills
    one past a step), with the same answer, the same history for each task, the same dependents."""
    client.pause()
    types = ("thumbnail_generate", "file_embed_image")
    first = {t: client.submit_many([{"type": t, "data": {"k": 1}}] * 600)["task_ids"] for t in types}
    for _ in range(9):
        client.submit_many([{"type": "noop"}] * 1000)
    dense = {t: client.submit_many([{"type": t, "data": {"k": 1}}] * 700)["task_ids"] for t in types}
    selected = {t: client.submit(t, {"k": 1}, depends_on=[first[t][0]])["id"] for t in types}
    child = {t: client.submit("noop", depends_on=[dense[t][-1]])["id"] for t in types}
    grandchild = {t: client.submit("noop", depends_on=[child[t]])["id"] for t in types}
    assert client.get(selected[types[0]])["status"] == "blocked"

    by_type = client.cancel_by_type(types[0])
    by_data = client.cancel_selected({"types": [types[1]], "where": ["k=1"]})
    counts = {"cancelled": 1301, "failed": 0, "total": 1301, "cancelled_dependents": 2}
    assert by_type == {**counts, "task_type": types[0]}
    assert by_data == counts
    assert client.count(["pending"], task_type="noop") == 9000

    def outcome(task_type: str) -> list[tuple]:
        """Each task of the run, its status and how it ended, its history but the request's words."""
        ids = [*first[task_type], *dense[task_type], selected[task_type], child[task_type]]
        tasks = [client.get(i) for i in [*ids, grandchild[task_type]]]
        return [
            (
                t["status"],
                t["stop_reason"],
                t["error"] and t["error"].split(" task_")[0],
                [(e["event"], e.get("running")) for e in client.history(t["id"])],
            )
            for t in tasks
        ]

    assert outcome(types[0]) == outcome(types[1])
    cancelled = outcome(types[0])
    assert {c[:3] for c in cancelled[:1301]} == {("cancelled", "not_started", None)}
    assert [c[:3] for c in cancelled[1301:]] == [("cancelled", "not_started", "dependency")] * 2
    history = (("submitted", None), ("cancel_requested", False), ("cancelled", None))
    assert {tuple(c[3]) for c in cancelled[:1301]} == {history}
    requests = {types[0]: {"by": "cancel-by-type", "task_type": types[0]}, types[1]: {"by": "cancel"}}
    for task_type, by in requests.items():
        for task_id in (first[task_type][0], dense[task_type][-1], selected[task_type]):
            (request,) = [e for e in client.history(task_id) if e["event"] == "cancel_requested"]
            assert by.items() <= request.items()
    assert client.get(child[types[0]])["error"] == f"dependency {dense[types[0]][-1]} was cancelled"


def test_per_task_answers_are_what_each_task_alone_would_be_answered(make_daemon, fifo):
    """`cancel`, `set_priority` and `retry` with task_ids run as a selection of those ids; each id
    is still answered, done or refused, in the words of the operation on that task alone."""
    from msearchd.errors import MsearchError

    with make_daemon(workers=1).client() as c:
        done = c.submit("noop")["id"]
        failed = c.submit("fail", {"message": "x"})["id"]
        c.wait([done, failed], timeout=20)
        gate = fifo("gate")
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})["id"]
        wait_started(c, run)
        waiting = [c.submit("noop")["id"] for _ in range(3)]
        ids = [waiting[0], done, run, failed, "task_999"]

        def alone(call, *args) -> tuple[str, str]:
            with pytest.raises(MsearchError) as refused:
                call(*args)
            return refused.value.code, refused.value.message

        cancels = c.cancel_many(ids)["results"]
        assert [r["success"] for r in cancels] == [True, False, False, False, False]
        for r, task in zip(cancels[1:], ids[1:], strict=True):
            assert (r["code"], r["error"]) == alone(c.cancel, task)
        priorities = c.set_priority_many([waiting[1], *ids[1:]], 2)["results"]
        assert [r["success"] for r in priorities] == [True, False, False, False, False]
        for r, task in zip(priorities[1:], ids[1:], strict=True):
            assert (r["code"], r["error"]) == alone(c.set_priority, task, 2)
        retries = c.retry_many([waiting[2], done, run, failed, "task_999"])["results"]
        assert [r["success"] for r in retries] == [False, False, False, True, False]
        for r, task in zip(retries, [waiting[2], done, run], strict=False):
            assert (r["code"], r["error"]) == alone(c.retry, task)
        assert (retries[4]["code"], retries[4]["error"]) == alone(c.retry, "task_999")
        gate.write()


# --- pause, resume, drain -----------------------------------------------------------------------------


def test_a_paused_type_does_not_start_and_the_pause_survives_a_restart(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        state = c.pause(["quick"])
        assert [p["type"] for p in state["paused"]] == ["quick"] and state["paused"][0]["uid"] is not None
        held = c.submit("quick", {})["id"]
        other = c.submit("noop", {})["id"]
        assert c.wait([other], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.get(held)["status"] == "pending"
    d.stop()
    d.start()
    with d.client() as c:
        assert c.stats()["paused"] == ["quick"]
        after = c.submit("noop", {})["id"]
        c.wait([after], timeout=20)
        assert c.get(held)["status"] == "pending"
        history = c.queue()["history"]
        assert [h["event"] for h in history] == ["queue_paused"] and history[0]["types"] == ["quick"]
        c.resume()
        assert c.wait([held], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.stats()["paused"] == []
        assert [h["event"] for h in c.queue()["history"]] == ["queue_paused", "queue_resumed"]


def test_a_paused_glob_holds_back_every_type_it_matches_across_a_restart(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as c:
        state = c.pause(["qu?ck", "stu*"])
        assert [p["type"] for p in state["paused"]] == ["qu?ck", "stu*"]
        held = [c.submit("quick")["id"], c.submit("stubborn")["id"]]
        c.wait([c.submit("noop")["id"]], timeout=20)  # a type no glob matches runs
        assert [c.get(i)["status"] for i in held] == ["pending", "pending"]
        with pytest.raises(InvalidArgument, match="invalid task type or pattern"):
            c.pause(["file embed*"])
    d.stop()
    d.start()
    with d.client() as c:
        assert c.stats()["paused"] == ["qu?ck", "stu*"]
        assert c.queue()["history"][0]["types"] == ["qu?ck", "stu*"]
        c.resume(["quick"])  # not what was paused: the glob holds it still
        c.wait([c.submit("noop")["id"]], timeout=20)
        assert [c.get(i)["status"] for i in held] == ["pending", "pending"]
        assert c.resume(["qu?ck"])["paused"][0]["type"] == "stu*"
        assert c.wait([held[0]], timeout=20)["tasks"][0]["status"] == "completed"
        assert c.get(held[1])["status"] == "pending"


def test_the_scheduler_holds_back_what_a_paused_glob_matches():
    """What a worker's lease may take after its first task, beside what the store claims."""
    scheduler = Scheduler()
    scheduler.pause({"file_embed_*", "thumbnail_generate"}, everything=False)
    assert scheduler.limited("file_embed_video") and scheduler.limited("thumbnail_generate")
    assert not scheduler.limited("file_scan")


def test_the_scheduler_holds_back_what_a_held_glob_matches_until_released():
    """A bulk cancel of `file_embed_*` holds those types back, and no other."""
    scheduler = Scheduler()
    scheduler.hold("file_embed_*")
    scheduler.hold("file_embed_*")  # two cancels at once
    assert scheduler.limited("file_embed_video") and not scheduler.limited("file_scan")
    assert scheduler.excluded_types() == ["file_embed_*"]  # the store's claim excludes what it matches
    scheduler.release("file_embed_*")
    assert scheduler.limited("file_embed_video")
    scheduler.release("file_embed_*")
    assert not scheduler.limited("file_embed_video") and scheduler.excluded_types() == []
    scheduler.hold("file_embed_*")
    scheduler.hold("thumbnail_*")  # another cancel, of another glob, at the same time
    assert scheduler.limited("file_embed_video") and scheduler.limited("thumbnail_generate")
    scheduler.release("thumbnail_*")  # each ends on its own
    assert scheduler.limited("file_embed_video") and not scheduler.limited("thumbnail_generate")
    scheduler.release("file_embed_*")
    assert not scheduler.limited("file_embed_video")


def test_drain_waits_for_running_tasks_and_times_out(make_daemon, fifo):
    d = make_daemon(workers=2)
    with d.client() as c:
        gate = fifo("gate")
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})
        wait_started(c, run["id"])
        result = c.drain(timeout=0.2)
        assert result["drained"] is False and result["running"] == [run["id"]] and result["all_paused"]
        queued = c.submit("noop", {})["id"]
        gate.write()
        assert c.drain(timeout=20)["drained"] is True
        assert c.get(queued)["status"] == "pending"  # paused: nothing new started
    d.stop()
    d.start()
    with d.client() as c:
        assert c.stats()["paused"] == ["*"]
        assert c.get(queued)["status"] == "pending"
        c.resume()
        assert c.wait([queued], timeout=20)["tasks"][0]["status"] == "completed"


def test_watchers_hear_of_a_pause(client, daemon):
    with daemon.client() as other, other.events() as stream:
        client.pause(["quick"])
        assert stream.ready(20)
        event = next(stream)
        assert event["event"] == "queue_paused" and event["types"] == ["quick"]


# --- msearchctl ---------------------------------------------------------------------------------------


def ctl_ok(d, *args: str) -> str:
    result = d.ctl(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def test_cli_add_with_a_key(daemon):
    ctl_ok(daemon, "queue", "pause")
    first = ctl_ok(daemon, "tasks", "add", "file_scan", "--key", "scan:/a", "--data", '{"v": 1}').strip()
    again = daemon.ctl("tasks", "add", "file_scan", "--key", "scan:/a")
    assert again.stdout.strip() == first and "key scan:/a: kept" in again.stderr
    replaced = daemon.ctl("tasks", "add", "file_scan", "--key", "scan:/a", "--on-conflict", "replace")
    assert replaced.stdout.strip() != first and f"replaced {first}" in replaced.stderr
    usage = daemon.ctl("tasks", "add", "file_scan", "--on-conflict", "replace")
    assert usage.returncode == 2 and "go with --key" in usage.stderr


def test_cli_selections_dry_run_then_run(daemon):
    with daemon.client() as c:
        ids = seed(c)
    args = ("tasks", "cancel", "--type", "file_embed_*", "--where", "path^=/mnt/nas/")
    preview = ctl_ok(daemon, *args, "--dry-run")
    assert "would cancel 2 task(s)" in preview
    assert "file_embed_video: 1 pending" in preview and ids["nas_image"][0] in preview
    up_to = preview.split("--up-to ")[1].split()[0]
    assert ctl_ok(daemon, *args, "--up-to", up_to) == "cancelled 2 task(s)\n"
    out = ctl_ok(daemon, "tasks", "priority", "--type", "thumbnail_generate", "11")
    assert out == "gave 2 task(s) priority 11 (2 selected)\n"
    with daemon.client() as c:
        assert {t["priority"] for t in c.list("pending", "thumbnail_generate")} == {11}
    assert "would give priority 0 to 1 task(s)" in ctl_ok(
        daemon, "tasks", "priority", "--with-priority", "5", "--dry-run", "0"
    )
    usage = daemon.ctl("tasks", "cancel", "--older-than", "yesterday")
    assert usage.returncode == 1 and "older_than must be a duration" in usage.stderr


def test_cli_retry_failed_selection(daemon):
    with daemon.client() as c:
        failed = c.submit("fail", {"path": "/mnt/nas/a"})["id"]
        other = c.submit("fail", {"path": "/home/a"})["id"]
        c.wait([failed, other], timeout=20)
        c.pause()
    assert "would retry 1 task(s)" in ctl_ok(
        daemon,
        "tasks",
        "retry",
        "--failed",
        "--type",
        "fa*",
        "--where",
        "path^=/mnt/",
        "--newer-than",
        "1d",
        "--dry-run",
    )
    out = ctl_ok(daemon, "tasks", "retry", "--failed", "--type", "fa*", "--where", "path^=/mnt/")
    assert out.startswith(f"{failed} -> task_") and other not in out


def test_cli_queue_pause_drain_resume(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})
        wait_started(c, run["id"])
    assert "paused quick since" in ctl_ok(d, "queue", "pause", "--type", "quick")
    timed_out = d.ctl("queue", "drain", "--timeout", "0.1")
    assert timed_out.returncode == 4 and run["id"] in timed_out.stdout
    stats = d.ctl("tasks", "stats")
    assert "queue paused: nothing starts" in stats.stderr
    gate.write()
    assert ctl_ok(d, "queue", "drain", "--timeout", "20") == "drained: nothing runs\n"
    assert ctl_ok(d, "queue", "resume") == "queue running: nothing paused\n"


def test_a_drain_under_way_holds_back_no_request_behind_it(make_daemon, fifo):
    d = make_daemon(workers=1)
    gate = fifo("gate")
    with d.client() as c:
        run = c.submit("command", {"argv": ["sh", "-c", f"read line < {gate}"]})
        wait_started(c, run["id"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(d.socket))
        sock.sendall(protocol.encode(protocol.request(0, "hello", {"protocol": protocol.PROTOCOL_VERSION})))
        assert protocol.recv_frame(sock)["id"] == 0
        sock.sendall(protocol.encode(protocol.request(1, "drain", {"timeout": 60})))
        sock.sendall(protocol.encode(protocol.request(2, "queue", {})))
        first = protocol.recv_frame(sock)
        assert first["id"] == 2 and first["result"]["all_paused"]  # the drain paused before it waited
        gate.write()
        second = protocol.recv_frame(sock)
        assert second["id"] == 1 and second["result"]["drained"] is True


def test_cli_cancel_all_and_by_type_preview_as_selections(daemon):
    with daemon.client() as c:
        seed(c)
    by_type = ctl_ok(daemon, "tasks", "cancel-by-type", "thumbnail_generate", "--dry-run")
    assert "would cancel 2 task(s)" in by_type and "thumbnail_generate: 2 pending" in by_type
    assert "would cancel 5 task(s)" in ctl_ok(daemon, "tasks", "cancel-all", "--dry-run")
    with daemon.client() as c:
        assert c.count("cancelled") == 0
    assert ctl_ok(daemon, "tasks", "cancel-all") == "cancelled 5 task(s)\n"

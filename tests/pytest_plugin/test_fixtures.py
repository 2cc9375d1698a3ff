"""Fixture lifetimes across batches: module/class/session fixtures stay up
between batches and are torn down only when a later test no longer needs
them, or at shutdown. The sample logs every setup and teardown to a file."""

import pytest

from dtest_driver import results_of


@pytest.fixture
def logged(sample, start, tmp_path):
    """(worker on the `fixtures` sample, a function returning the log's lines)."""
    log = tmp_path / "log.txt"
    log.write_text("")
    w = start(sample("fixtures"), "worker", env={"DTEST_SAMPLE_LOG": str(log)})
    assert w.expect("ready") == {"ev": "ready", "count": 7, "errors": []}
    return w, lambda: log.read_text().splitlines()


def passed(events):
    outcomes = [r["outcome"] for r in results_of(events).values()]
    return bool(outcomes) and outcomes == ["passed"] * len(outcomes)


def test_module_fixture_set_up_once_across_batches(logged):
    w, lines = logged
    assert passed(w.run(["check_mod_a.py::test_a1", "check_mod_a.py::test_a2"]))
    # The batch's last test finished its function fixture, not the module's.
    assert lines() == ["session setup", "setup a", "run a1", "fn teardown test_a1", "run a2", "fn teardown test_a2"]

    assert passed(w.run(["check_mod_a.py::test_a3"]))
    assert lines()[6:] == ["run a3", "fn teardown test_a3"]  # no second "setup a"

    # The next batch moves on to another module: module a goes first.
    assert passed(w.run(["check_mod_b.py::test_b1"]))
    assert lines()[8:] == ["teardown a", "setup b", "run b1", "fn teardown test_b1"]

    rest, status = w.shutdown()
    assert rest == [] and status == 0
    assert lines()[12:] == ["teardown b", "session teardown", "sessionfinish"]


def test_module_change_inside_a_batch(logged):
    w, lines = logged
    assert passed(w.run(["check_mod_a.py::test_a1", "check_mod_b.py::test_b1", "check_mod_a.py::test_a2"]))
    assert lines() == [
        "session setup", "setup a", "run a1", "fn teardown test_a1", "teardown a",
        "setup b", "run b1", "fn teardown test_b1", "teardown b",
        "setup a", "run a2", "fn teardown test_a2",
    ]


def test_teardown_failure_between_batches_is_logged(logged):
    w, lines = logged
    assert passed(w.run(["check_mod_c.py::test_c1"]))
    events = w.run(["check_mod_a.py::test_a1"])
    assert [e["ev"] for e in events] == ["log", "start", "result"]
    assert events[0]["text"].startswith("error in fixture teardown before check_mod_a.py::test_a1:\n")
    assert "RuntimeError: mod_c teardown failed" in events[0]["text"]
    assert events[2]["outcome"] == "passed"
    assert lines() == ["setup c", "run c1", "teardown c", "session setup", "setup a", "run a1", "fn teardown test_a1"]


def test_teardown_failure_at_shutdown_is_logged(logged):
    w, lines = logged
    assert passed(w.run(["check_mod_a.py::test_a1", "check_mod_c.py::test_c1"]))
    rest, status = w.shutdown()
    assert [e["ev"] for e in rest] == ["log"]
    assert rest[0]["text"].startswith("error in fixture teardown at shutdown:\n")
    assert "RuntimeError: mod_c teardown failed" in rest[0]["text"]
    assert lines()[-4:] == ["run c1", "teardown c", "session teardown", "sessionfinish"]


def test_eof_on_input_ends_the_worker_cleanly(logged):
    w, lines = logged
    assert passed(w.run(["check_mod_a.py::test_a1"]))
    w.close_input()
    assert w.events_to_eof() == []
    assert w.wait() == 0
    assert lines()[-3:] == ["teardown a", "session teardown", "sessionfinish"]

"""Worker mode: ready, run batches (start/result/batch_done), shutdown."""

import shutil

import pytest

from dtest_driver import SAMPLES, Pytest, results_of

RESULT_KEYS = {"ev", "i", "outcome", "duration", "message", "output"}


def outcomes_id(name):
    return "check_outcomes.py::" + name


def run_one(worker, test_id):
    events = worker.run([test_id])
    assert [e["ev"] for e in events] == ["start", "result"], events
    return events[1]


def start_basic(sample, start):
    w = start(sample("basic"), "worker")
    ready = w.expect("ready")
    assert ready == {"ev": "ready", "count": 26, "errors": []}
    return w


@pytest.fixture
def basic_worker(sample, start):
    """A worker of its own, for tests that end it."""
    return start_basic(sample, start)


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory):
    """One worker for the tests that only run batches on it."""
    project = tmp_path_factory.mktemp("shared") / "basic"
    shutil.copytree(SAMPLES / "basic", project)
    w = Pytest(project, "worker")
    try:
        assert w.expect("ready") == {"ev": "ready", "count": 26, "errors": []}
        yield w
    finally:
        w.kill()


def test_batch_events_in_order(shared_worker):
    names = ["test_pass", "test_fail", "test_skip"]
    events = shared_worker.run([outcomes_id(n) for n in names])
    assert [(e["ev"], e["i"]) for e in events] == [
        ("start", 0), ("result", 0), ("start", 1), ("result", 1), ("start", 2), ("result", 2),
    ]
    for e in events:
        if e["ev"] == "result":
            assert set(e) == RESULT_KEYS
            assert isinstance(e["duration"], float) and e["duration"] >= 0
    assert [r["outcome"] for r in results_of(events).values()] == ["passed", "failed", "skipped"]


def test_pass_with_captured_stdout(shared_worker):
    r = run_one(shared_worker, outcomes_id("test_pass"))
    assert (r["outcome"], r["message"]) == ("passed", "")
    assert r["output"] == "----- Captured stdout call -----\nhello from pass\n"


def test_captured_stderr(shared_worker):
    r = run_one(shared_worker, outcomes_id("test_stderr"))
    assert (r["outcome"], r["message"]) == ("passed", "")
    assert r["output"] == "----- Captured stderr call -----\nto stderr\n"


def test_failure_message_and_traceback(shared_worker):
    r = run_one(shared_worker, outcomes_id("test_fail"))
    assert (r["outcome"], r["message"]) == ("failed", "AssertionError: assert 1 == 2")
    out = r["output"]
    assert out.startswith("    def test_fail():\n")
    assert ">       assert 1 == 2\nE       assert 1 == 2\n" in out
    assert "check_outcomes.py:12: AssertionError\n" in out
    assert out.endswith("\n----- Captured stdout call -----\nabout to fail\n")


@pytest.mark.parametrize(
    "name, outcome, message",
    [
        ("test_skip", "skipped", "not today"),
        ("test_skip_mark", "skipped", "marked skip"),
        ("test_xfail", "xfailed", "known bug"),
        ("test_xpass", "xpassed", "maybe fixed"),
        ("test_xpass_strict", "failed", "[XPASS(strict)] must fail"),
        ("test_setup_error", "error", "error in setup: RuntimeError: setup exploded"),
        ("test_teardown_error", "error", "error in teardown: ValueError: teardown exploded"),
        ("test_fail_and_teardown_error", "failed", "AssertionError: call failed"),
    ],
)
def test_outcome_and_message(shared_worker, name, outcome, message):
    r = run_one(shared_worker, outcomes_id(name))
    assert (r["outcome"], r["message"]) == (outcome, message)


def test_outputs_of_non_passing_outcomes(shared_worker):
    names = ["test_skip", "test_xfail", "test_xpass", "test_xpass_strict", "test_setup_error",
             "test_teardown_error", "test_fail_and_teardown_error"]
    res = results_of(shared_worker.run([outcomes_id(n) for n in names]))
    skip, xfail, xpass, strict, setup_err, teardown_err, both = (res[i]["output"] for i in range(7))
    assert skip.startswith("check_outcomes.py:") and skip.endswith(": Skipped: not today\n")
    assert "E       assert 0\n" in xfail
    assert xpass == ""
    assert strict == "[XPASS(strict)] must fail\n"
    assert "E       RuntimeError: setup exploded\n" in setup_err
    assert "E       ValueError: teardown exploded\n" in teardown_err
    assert teardown_err.endswith("----- Captured stdout teardown -----\ntearing down\n")
    # A failed test keeps its call's traceback; the teardown's follows.
    call_part, teardown_part = both.split("----- error in teardown -----\n")
    assert "E       AssertionError: call failed\n" in call_part
    assert "E       ValueError: teardown exploded\n" in teardown_part


def test_events_stay_valid_utf8(shared_worker):
    # The driver decodes every line as strict UTF-8, as the agent's parser needs.
    r = run_one(shared_worker, outcomes_id("test_undecodable_text"))
    assert (r["outcome"], r["message"]) == ("failed", "ValueError: bad ? byte")


def test_unicode_and_bracket_ids_run(shared_worker):
    ids = ["check_classes.py::test_param[café]", "check_classes.py::test_param[p::q]",
           "check_classes.py::test_param[x[1]]", "check_classes.py::TestAlpha::TestNested::test_deep"]
    res = results_of(shared_worker.run(ids))
    assert [res[i]["outcome"] for i in range(4)] == ["passed"] * 4


def test_unknown_and_deselected_ids_are_not_run(sample, start):
    w = start(sample("basic"), "worker", "-k", "not test_skip_mark")
    assert w.expect("ready")["count"] == 25
    events = w.run(["nope.py::test_nothing", outcomes_id("test_skip_mark"), outcomes_id("test_pass")])
    assert [(e["ev"], e["i"]) for e in events] == [("result", 0), ("result", 1), ("start", 2), ("result", 2)]
    assert events[0] == {
        "ev": "result", "i": 0, "outcome": "not_run", "duration": 0.0, "output": "",
        "message": "not collected on this worker: no such test in its collection",
    }
    assert (events[1]["outcome"], events[1]["message"]) == (
        "not_run", "not collected on this worker: deselected (-k, -m or a plugin)")
    assert events[3]["outcome"] == "passed"


def test_collection_errors_in_worker(broken_project, start):
    w = start(broken_project, "worker")
    ready = w.expect("ready")
    assert ready["count"] == 3
    assert [e["id"] for e in ready["errors"]] == ["check_a_import.py", "check_c_syntax.py"]
    events = w.run(["check_c_syntax.py::test_x", "check_b_ok.py::test_ok"])
    assert (events[0]["outcome"], events[0]["message"]) == (
        "not_run", "not collected on this worker: collecting check_c_syntax.py failed")
    assert [(e["ev"], e["i"]) for e in events[1:]] == [("start", 1), ("result", 1)]
    assert events[2]["outcome"] == "passed"


def test_malformed_commands_are_logged_and_skipped(shared_worker):
    w = shared_worker
    for line in ["not json", "[1, 2]", '{"cmd": "dance"}', '{"cmd": "run", "ids": "check_outcomes.py::test_pass"}']:
        w.send_raw(line + "\n")
        ev = w.expect("log")
        assert ev["text"].startswith("bad command: "), ev
    w.send_raw("\n")  # blank lines are ignored
    assert run_one(w, outcomes_id("test_pass"))["outcome"] == "passed"


def test_process_exit_mid_test(basic_worker):
    w = basic_worker
    w.send({"cmd": "run", "ids": [outcomes_id("test_pass"), outcomes_id("test_exit_mid_test"), outcomes_id("test_fail")]})
    events = w.events_to_eof()
    assert [(e["ev"], e["i"]) for e in events] == [("start", 0), ("result", 0), ("start", 1)]
    assert w.wait() == 3


def test_pytest_exit_mid_test(basic_worker):
    w = basic_worker
    w.send({"cmd": "run", "ids": [outcomes_id("test_pytest_exit"), outcomes_id("test_pass")]})
    events = w.events_to_eof()
    assert [(e["ev"], e["i"]) for e in events] == [("start", 0), ("result", 0)]
    assert (events[1]["outcome"], events[1]["message"]) == ("error", "pytest.exit: enough")
    assert w.wait() != 0


def test_shutdown_ends_the_session(basic_worker):
    run_one(basic_worker, outcomes_id("test_pass"))
    rest, status = basic_worker.shutdown()
    assert rest == []
    assert status == 0
    assert "1 passed" in basic_worker.printed()


XDIST_ENV = {"PYTEST_XDIST_WORKER": "gw3", "PYTEST_XDIST_WORKER_COUNT": "5", "PYTEST_XDIST_TESTRUNUID": "run-42"}


# "-p no:xdist" makes the plugin provide worker_id/testrun_uid itself (as it
# does when xdist is not installed); without it xdist's own fixtures serve.
@pytest.mark.parametrize("extra", [[], ["-p", "no:xdist"]], ids=["xdist-if-installed", "no-xdist"])
def test_xdist_worker_identity(sample, start, extra):
    w = start(sample("basic"), "worker", *extra, env=XDIST_ENV)
    w.expect("ready")
    r = run_one(w, "check_workers.py::test_worker_identity")
    assert (r["outcome"], r["message"]) == ("passed", ""), r["output"]


@pytest.mark.parametrize("extra", [[], ["-p", "no:xdist"]], ids=["xdist-if-installed", "no-xdist"])
def test_no_worker_identity_without_the_variables(sample, start, extra):
    w = start(sample("basic"), "worker", *extra)
    w.expect("ready")
    r = run_one(w, "check_workers.py::test_not_a_worker")
    assert (r["outcome"], r["message"]) == ("passed", ""), r["output"]


def test_plugin_is_inert_without_mode(sample, start):
    p = start(sample("basic"), None, "check_workers.py::test_plugin_inert", env={"PYTEST_XDIST_WORKER": "gw1"})
    assert p.events_to_eof() == []
    assert p.wait() == 0, p.printed()
    assert "1 passed" in p.printed()


def test_xdist_options_do_not_distribute(sample, start):
    # -n in the user's arguments (or addopts) must not start xdist's own
    # distribution inside a dtest worker: the tests run right here.
    pytest.importorskip("xdist")
    w = start(sample("basic"), "worker", "-n", "2", "--dist", "loadgroup", env=XDIST_ENV)
    assert w.expect("ready") == {"ev": "ready", "count": 26, "errors": []}
    r = run_one(w, "check_workers.py::test_worker_identity")
    assert (r["outcome"], r["message"]) == ("passed", ""), r["output"]
    rest, status = w.shutdown()
    assert (rest, status) == ([], 0)


def test_listing_worker_lists_then_serves(sample, start):
    """DTEST_PYTEST_LIST=1: the same process writes the listing, then ready,
    then runs batches (the agent collects with the worker that will run)."""
    w = start(sample("basic"), "worker", env={"DTEST_PYTEST_LIST": "1"})
    listing = w.expect("collected")
    ids = [item["id"] for item in listing["items"]]
    assert len(ids) == 26
    assert outcomes_id("test_pass") in ids
    assert w.expect("ready") == {"ev": "ready", "count": 26, "errors": []}
    result = run_one(w, outcomes_id("test_pass"))
    assert result["outcome"] == "passed"
    # The variable is the plugin's own: tests do not see it.
    w.shutdown()

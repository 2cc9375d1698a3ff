"""dtest's pytest plugin: lets dtest-agent collect and run pytest suites.

The agent starts ``PYTHON -m pytest -p dtest_pytest [user args...]`` with this
file's folder on PYTHONPATH and, in the environment:

  DTEST_PYTEST_MODE  ``collect`` or ``worker``; when unset the plugin does nothing
  DTEST_PYTEST_FDS   ``IN,OUT``: inherited descriptors; commands are read from IN,
                     events written to OUT, one JSON object a line, flushed each line
  DTEST_PYTEST_LIST  ``1``: a worker also writes the ``collected`` line (before
                     ``ready``), so one process both lists and runs

collect: pytest collects (paths, -k, -m, ini options all apply), then one line
  {"ev":"collected","rootdir":..,"items":[{"id","file","scope","group"}],"errors":[{"id","text"}]}
  is written and pytest ends without running a test.

worker: pytest collects, writes {"ev":"ready","count":N,"errors":[..]}, then serves
  {"cmd":"run","ids":[..]}   -> per test {"ev":"start","i":k} and
                                {"ev":"result","i":k,"outcome","duration","message","output"},
                                then {"ev":"batch_done"}
  {"cmd":"shutdown"} or EOF  -> final teardown, pytest finishes its session, exit.
  Module/class/session fixtures stay up between batches; they are torn down when
  the next batch's first test no longer needs them (or at shutdown).

stdout/stderr are not the channel: pytest and the tests may print there.

This module is embedded in the agent and written to a cache folder on remote
hosts: it must import nothing but the standard library and pytest.
"""

import io
import json
import os
import socket
import sys
import time
import traceback
import types
import uuid

import pytest

try:  # for rendering reports; guarded as it is pytest's internal module
    from _pytest._io import TerminalWriter as _TerminalWriter
except Exception:  # pragma: no cover
    _TerminalWriter = None

_MODES = ("collect", "worker")
_PLUGIN_NAME = "dtest-pytest"
_OUTCOMES_OF_REPORTS = ("passed", "failed", "skipped")

# The process-wide state: the channel is opened once, by the first config
# that activates the plugin (a pytest run inside a test, e.g. pytester's
# inline runs, never takes the channel over).
_state = {"mode": None, "fds": None, "lists": False, "read_env": False, "channel": None, "owner": None, "early_sent": False}


def _mode():
    """The mode from the environment (read once; the variables are then
    removed so that processes the tests start do not inherit them)."""
    if not _state["read_env"]:
        _state["read_env"] = True
        mode = os.environ.get("DTEST_PYTEST_MODE", "")
        _state["mode"] = mode or None
        _state["fds"] = os.environ.get("DTEST_PYTEST_FDS", "")
        _state["lists"] = os.environ.get("DTEST_PYTEST_LIST") == "1"
    return _state["mode"]


def _lists():
    _mode()
    return _state["lists"]


def _check_mode():
    mode = _mode()
    if mode is not None and mode not in _MODES:
        raise pytest.UsageError(
            "dtest_pytest: DTEST_PYTEST_MODE must be 'collect' or 'worker', not %r" % (mode,)
        )
    return mode


class _Channel:
    """Commands in, events out: JSON lines over two inherited descriptors."""

    def __init__(self, spec, want_input):
        try:
            in_fd, out_fd = (int(x) for x in spec.split(","))
        except ValueError:
            raise pytest.UsageError(
                "dtest_pytest: DTEST_PYTEST_FDS must be 'IN,OUT' (two descriptor numbers), not %r" % (spec,)
            )
        for fd in (in_fd, out_fd):
            try:
                # Processes the tests start must not hold the channel open.
                os.set_inheritable(fd, False)
            except OSError as e:
                raise pytest.UsageError("dtest_pytest: descriptor %d from DTEST_PYTEST_FDS: %s" % (fd, e))
        self._out = open(out_fd, "wb")
        self._in = None
        if want_input:
            self._in = open(in_fd, "rb")
        elif in_fd != out_fd:
            try:
                os.close(in_fd)
            except OSError:
                pass
        self.dead = False  # the agent stopped reading: nothing more to say

    def send(self, obj):
        if self.dead:
            return
        # ensure_ascii=False plus "replace": always valid UTF-8, even for
        # strings holding lone surrogates (undecodable bytes in output).
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        data = line.encode("utf-8", "replace") + b"\n"
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError):
            self.dead = True

    def log(self, text):
        self.send({"ev": "log", "text": text})

    def receive(self):
        """The next command: a dict; None at EOF; a str (the complaint) for
        a line that is not a command object."""
        while True:
            try:
                raw = self._in.readline()
            except (OSError, ValueError):
                return None
            if not raw:
                return None
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                cmd = json.loads(text)
            except ValueError as e:
                return "%s: %s" % (e, _clip(text))
            if not isinstance(cmd, dict):
                return "not an object: " + _clip(text)
            return cmd


def _clip(text, n=200):
    return text if len(text) <= n else text[:n] + "..."


def _channel(want_input):
    if _state["channel"] is None:
        _state["channel"] = _Channel(_state["fds"] or "", want_input)
    return _state["channel"]


# ---------------------------------------------------------------------------
# module-level hooks: inert unless DTEST_PYTEST_MODE is set


def _prepare(config):
    """Never distribute from inside a dtest worker, never stop early, and
    look like an xdist worker when the agent says which worker this is."""
    opt = config.option
    if hasattr(opt, "dist"):
        opt.dist = "no"  # xdist starts its DSession only for dist != "no" ...
    if hasattr(opt, "tx"):
        opt.tx = []  # ... and with gateways to start
    if getattr(opt, "looponfail", False):
        opt.looponfail = False
    # -x / --maxfail would stop collection at the first broken file and,
    # on pytest 8, tear everything down after each test; the master decides
    # when a run stops.
    if hasattr(opt, "maxfail"):
        opt.maxfail = 0
    wid = os.environ.get("PYTEST_XDIST_WORKER")
    if wid and not hasattr(config, "workerinput"):
        try:
            count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        except ValueError:
            count = 1
        config.workerinput = {
            "workerid": wid,
            "workercount": count,
            "testrunuid": os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex,
            "mainargv": list(sys.argv),
            # What pytest-cov's controller would hand an xdist worker on its
            # own host: the worker then saves its coverage data as a
            # .coverage.* file (coverage's parallel mode) for `coverage
            # combine` to merge; there is no controller to report.
            "cov_master_host": socket.gethostname(),
            "cov_master_topdir": os.getcwd(),
            "cov_master_rsync_roots": [],
        }
        config.workeroutput = {}


def _rootdir(config):
    rootpath = getattr(config, "rootpath", None)  # pytest >= 6.1
    return rootpath if rootpath is not None else getattr(config, "rootdir", "")


def _owns(config):
    owner = _state["owner"]
    return owner is None or owner is config


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # Runs before pytest_configure: conftest configure hooks see workerinput too.
    if _check_mode() is not None and _owns(config):
        _prepare(config)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    mode = _check_mode()
    if mode is None or not _owns(config) or config.pluginmanager.get_plugin(_PLUGIN_NAME) is not None:
        return
    _prepare(config)
    channel = _channel(want_input=(mode == "worker"))
    _state["owner"] = config
    os.environ.pop("DTEST_PYTEST_MODE", None)
    os.environ.pop("DTEST_PYTEST_FDS", None)
    os.environ.pop("DTEST_PYTEST_LIST", None)
    config.pluginmanager.register(_DtestPlugin(config, mode, channel), _PLUGIN_NAME)
    if not config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_fallback_fixtures(), _PLUGIN_NAME + "-worker-fixtures")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    # pytest-cov started a central controller before the conftests loaded
    # (nothing said "xdist" yet); at this hook it starts its xdist-worker
    # controller instead and would drop what the first one traced (the
    # conftests' imports, and what they import). Keep that too, as one more
    # parallel data file for `coverage combine`, saved at the end: every
    # worker's early controller erases the parallel files when it starts.
    # (Under xdist the controller process traces those lines.)
    config = session.config
    if _state["owner"] is not config or getattr(config, "workerinput", None) is None:
        return
    ctl = getattr(config.pluginmanager.get_plugin("_cov"), "cov_controller", None)
    if ctl is None or type(ctl).__name__ != "Central":
        return
    try:
        ctl.cov.stop()
        ctl.unset_env()
        _state["early_cov"] = ctl.cov
    except Exception as e:  # a pytest-cov this was not written for: say so, go on
        sys.stderr.write("dtest: pytest-cov's early coverage data is lost: %r\n" % (e,))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    cov = _state.pop("early_cov", None)
    if cov is not None:
        try:
            cov.save()
        except Exception as e:
            sys.stderr.write("dtest: pytest-cov's early coverage data is lost: %r\n" % (e,))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _state["owner"] is config:
        _state["owner"] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # A broken conftest.py at the top fails pytest before collection; say so
    # on the channel so the agent gets the error, not just a dead process.
    outcome = yield
    if outcome.excinfo is None or _state["early_sent"] or _state["owner"] is not None:
        return
    try:
        mode = _check_mode()
    except pytest.UsageError:
        return
    if mode is None:
        return
    ns = getattr(early_config, "known_args_namespace", None)
    if getattr(ns, "help", False) or getattr(ns, "version", False):
        return
    exc = outcome.excinfo[1]
    rootdir = str(_rootdir(early_config) or os.getcwd())
    error = {"id": _conftest_id(exc, rootdir), "text": _describe_startup_error(exc)}
    try:
        channel = _channel(want_input=False)
    except pytest.UsageError:
        return
    _state["early_sent"] = True
    if mode == "collect" or _lists():
        channel.send({"ev": "collected", "rootdir": rootdir, "items": [], "errors": [error]})
    if mode != "collect":
        channel.send({"ev": "ready", "count": 0, "errors": [error]})


def _conftest_id(exc, rootdir):
    path = getattr(exc, "path", None)
    if path is None:
        return ""
    try:
        return os.path.relpath(str(path), rootdir).replace(os.sep, "/")
    except ValueError:
        return str(path)


def _describe_startup_error(exc):
    cause = getattr(exc, "cause", None)
    if cause is None:
        excinfo = getattr(exc, "excinfo", None)
        if isinstance(excinfo, tuple) and len(excinfo) == 3:
            cause = excinfo[1]
    path = getattr(exc, "path", None)
    if cause is not None and path is not None:
        return "ImportError while loading conftest '%s'.\n%s" % (path, _format_exception(cause).rstrip())
    return _format_exception(exc).rstrip()


def _format_exception(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _fallback_fixtures():
    """xdist's worker_id and testrun_uid fixtures, for when xdist is absent."""
    mod = types.ModuleType("dtest_pytest_worker_fixtures")

    @pytest.fixture(scope="session")
    def worker_id(request):
        workerinput = getattr(request.config, "workerinput", None)
        return workerinput["workerid"] if workerinput else "master"

    @pytest.fixture(scope="session")
    def testrun_uid(request):
        workerinput = getattr(request.config, "workerinput", None)
        return workerinput["testrunuid"] if workerinput else uuid.uuid4().hex

    mod.worker_id = worker_id
    mod.testrun_uid = testrun_uid
    return mod


# ---------------------------------------------------------------------------
# the collection listing


def _scope_of(item):
    """xdist's loadscope scope: the node id up to its last '::' part (so
    a class's tests share a scope, a module's plain functions share the
    module's). Cut at the item's own name when the id ends with it, so a
    parameter id holding '::' does not split a test off its module."""
    nodeid = item.nodeid
    name = getattr(item, "name", "")
    if name and nodeid.endswith("::" + name) and len(nodeid) > len(name) + 2:
        return nodeid[: -len(name) - 2]
    return nodeid.rsplit("::", 1)[0]


def _group_of(item):
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    name = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
    return str(name)


def _item_entry(item):
    nodeid = item.nodeid
    return {
        "id": nodeid,
        "file": nodeid.split("::", 1)[0],
        "scope": _scope_of(item),
        "group": _group_of(item),
    }


def _describe_collection_failure(exc):
    if isinstance(exc, pytest.UsageError):
        return "ERROR: " + "\n".join(str(a) for a in exc.args)
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


# ---------------------------------------------------------------------------
# outcomes


def _first_line(text):
    text = (text or "").strip("\n")
    return text.split("\n", 1)[0].rstrip()


def _crash_line(report, exc_lines):
    """The exception's line ("AssertionError: assert 1 == 2")."""
    line = exc_lines.get(id(report), (None, ""))[1]
    if line:
        return line
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return _first_line(message)
    lines = [ln.strip() for ln in _longrepr_text(report).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _skip_reason(report):
    """The reason as the user gave it (pytest's _get_raw_skip_reason)."""
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        reason = str(wasxfail)
        return reason[len("reason: ") :] if reason.startswith("reason: ") else reason
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        if reason.startswith("Skipped: "):
            return reason[len("Skipped: ") :]
        return "" if reason == "Skipped" else reason
    return _first_line(_longrepr_text(report))


def _longrepr_text(report, rootdir=None):
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        # A skip: (path, line, "Skipped: reason"), shown as pytest shows it.
        path, lineno, reason = longrepr
        path = str(path)
        if rootdir and os.path.isabs(path):
            rel = os.path.relpath(path, rootdir)
            if not rel.startswith(".."):
                path = rel.replace(os.sep, "/")
        return "%s:%s: %s" % (path, lineno, reason)
    if _TerminalWriter is not None:
        # report.longreprtext, less its strip(), which eats the first
        # line's indentation.
        try:
            buf = io.StringIO()
            tw = _TerminalWriter(buf)
            tw.hasmarkup = False
            tw.fullwidth = 80
            report.toterminal(tw)
            return buf.getvalue().strip("\n")
        except Exception:
            pass
    try:
        return report.longreprtext
    except Exception:  # a plugin's odd longrepr
        return str(longrepr)


def _sections_text(reports):
    # Each phase's report repeats the sections of the phases before it.
    seen = set()
    parts = []
    for report in reports:
        for title, content in getattr(report, "sections", ()) or ():
            if (title, content) in seen:
                continue
            seen.add((title, content))
            parts.append("----- %s -----\n%s" % (title, content))
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def _summarize(reports, exc_lines, rootdir=None):
    """One result from a test's setup/call/teardown reports."""
    duration = 0.0
    by_when = {}
    for report in reports:
        duration += float(getattr(report, "duration", 0.0) or 0.0)
        if report.outcome not in _OUTCOMES_OF_REPORTS:  # e.g. a rerun's
            continue
        # The last report of a phase counts, unless an earlier one of it
        # failed (several "call" reports: subtests).
        previous = by_when.get(report.when)
        if previous is None or not previous.failed:
            by_when[report.when] = report
    setup, call, teardown = by_when.get("setup"), by_when.get("call"), by_when.get("teardown")
    if not by_when:
        return {
            "outcome": "error",
            "duration": duration,
            "message": "pytest reported nothing for this test (a plugin took over its run)",
            "output": "",
        }

    outcome, message, main = "passed", "", None
    if setup is not None and setup.failed:
        outcome, main = "error", setup
        message = "error in setup: " + _crash_line(setup, exc_lines)
    elif setup is not None and setup.skipped:
        outcome = "xfailed" if hasattr(setup, "wasxfail") else "skipped"
        main, message = setup, _skip_reason(setup)
    elif call is not None:
        if call.failed:
            outcome, main = "failed", call
            message = _crash_line(call, exc_lines)
        elif call.skipped:
            outcome = "xfailed" if hasattr(call, "wasxfail") else "skipped"
            main, message = call, _skip_reason(call)
        elif hasattr(call, "wasxfail"):
            outcome, message = "xpassed", _skip_reason(call)

    parts = []
    if outcome not in ("passed", "xpassed") and main is not None:
        parts.append(_longrepr_text(main, rootdir))
    if teardown is not None and teardown.failed:
        if outcome not in ("failed", "error"):
            outcome = "error"
            message = "error in teardown: " + _crash_line(teardown, exc_lines)
        text = _longrepr_text(teardown, rootdir)
        parts.append("----- error in teardown -----\n" + text if parts else text)
    sections = _sections_text(reports)
    if sections:
        parts.append(sections)
    output = "".join(p if p.endswith("\n") else p + "\n" for p in parts if p)
    return {"outcome": outcome, "duration": duration, "message": message, "output": output}


# ---------------------------------------------------------------------------
# the worker


class _KeepCollectors:
    """Stands in for "the next test" after a batch's last test. Its chain is
    that test's collectors, so SetupState.teardown_exact finishes only the
    test's own (function-scoped) fixtures and keeps module, class and session
    fixtures up for the next batch. Anything else a plugin asks of it is
    answered by the test's innermost collector."""

    def __init__(self, item):
        self._chain = item.listchain()[:-1]

    def listchain(self):
        return list(self._chain)

    def __getattr__(self, name):
        if name == "_chain" or name.startswith("__") or not self._chain:
            raise AttributeError(name)
        return getattr(self._chain[-1], name)

    def __repr__(self):
        return "<dtest: keep %r>" % (self._chain[-1] if self._chain else None,)


def _is_exit(exc):
    return isinstance(exc, (KeyboardInterrupt, pytest.exit.Exception))


class _DtestPlugin:
    def __init__(self, config, mode, channel):
        self.config = config
        self.mode = mode
        self.channel = channel
        self.errors = []
        self.deselected = set()
        self.current = None  # the item being run
        self.reports = []
        self.exc_lines = {}
        self.by_id = {}
        self.announced = False
        self.rootdir = str(_rootdir(config))

    # -- collection --------------------------------------------------------

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append({"id": report.nodeid, "text": _longrepr_text(report, self.rootdir)})

    @pytest.hookimpl
    def pytest_deselected(self, items):
        for item in items:
            self.deselected.add(item.nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collection(self, session):
        outcome = yield
        if outcome.excinfo is not None:
            exc = outcome.excinfo[1]
            self.errors.append({"id": "", "text": _describe_collection_failure(exc)})
            self._announce(session, [])
        else:
            self._announce(session, list(getattr(session, "items", None) or []))

    def _announce(self, session, items):
        if self.announced:
            return
        self.announced = True
        if self.mode == "collect" or _lists():
            # A worker asked to list (DTEST_PYTEST_LIST=1) does both: the
            # agent collects with the process that then runs its batches.
            self.channel.send(
                {
                    "ev": "collected",
                    "rootdir": self.rootdir,
                    "items": [_item_entry(item) for item in items],
                    "errors": self.errors,
                }
            )
        if self.mode != "collect":
            for item in items:
                self.by_id.setdefault(item.nodeid, item)
            self.channel.send({"ev": "ready", "count": len(items), "errors": self.errors})

    # -- running -----------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        if self.mode == "collect":
            return True
        self._serve(session)
        return True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        # pytest's reports drop "AssertionError: " from rewritten asserts;
        # the message keeps the exception's own line, remembered per report
        # (the report is kept too, so its id stays its own).
        outcome = yield
        if item is not self.current or call.excinfo is None:
            return
        try:
            report = outcome.get_result()
            self.exc_lines[id(report)] = (report, _first_line(call.excinfo.exconly()))
        except BaseException:
            pass

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        if self.current is not None and report.nodeid == self.current.nodeid and report.when:
            self.reports.append(report)

    def _serve(self, session):
        channel = self.channel
        while not channel.dead:
            cmd = channel.receive()
            if cmd is None:
                break
            if isinstance(cmd, str):
                channel.log("bad command: " + cmd)
                continue
            kind = cmd.get("cmd")
            if kind == "shutdown":
                break
            if kind == "run":
                ids = cmd.get("ids")
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    channel.log("bad command: 'ids' must be a list of node ids: " + _clip(json.dumps(cmd)))
                    continue
                self._run_batch(session, ids)
                continue
            channel.log("bad command: " + _clip(json.dumps(cmd)))
        self._teardown(session, None, "at shutdown")

    def _keeps_fixtures(self, session):
        state = getattr(session, "_setupstate", None)
        return state is not None and callable(getattr(state, "teardown_exact", None))

    def _teardown(self, session, nextitem, when):
        """Tears down what `nextitem` does not need (all when None). A failure
        is logged: the tests it belonged to have already reported."""
        if not self._keeps_fixtures(session):
            return
        state = session._setupstate
        if not getattr(state, "stack", True):
            return
        try:
            state.teardown_exact(nextitem)
        except BaseException as exc:
            if _is_exit(exc):
                raise
            self.channel.log("error in fixture teardown %s:\n%s" % (when, _format_exception(exc).rstrip()))
            if nextitem is None:
                # Whatever is left would be torn down (and fail) again at
                # sessionfinish; pytest 7 and 8 leave an empty stack here.
                try:
                    state.stack.clear()
                except Exception:
                    pass

    def _why_missing(self, nodeid):
        if nodeid in self.deselected:
            return "deselected (-k, -m or a plugin)"
        for error in self.errors:
            eid = error["id"]
            if eid == "" or nodeid == eid or nodeid.startswith(eid + "::") or nodeid.startswith(eid + "/"):
                return "collecting %s failed" % (eid or "the session")
        return "no such test in its collection"

    def _run_batch(self, session, ids):
        items = [self.by_id.get(nodeid) for nodeid in ids]
        runnable = [k for k, item in enumerate(items) if item is not None]
        keep = self._keeps_fixtures(session)
        if runnable and keep:
            self._teardown(session, items[runnable[0]], "before " + items[runnable[0]].nodeid)
        nxt = 0
        for k, nodeid in enumerate(ids):
            item = items[k]
            if item is None:
                self.channel.send(
                    {
                        "ev": "result",
                        "i": k,
                        "outcome": "not_run",
                        "duration": 0.0,
                        "message": "not collected on this worker: " + self._why_missing(nodeid),
                        "output": "",
                    }
                )
                continue
            nxt += 1
            if nxt < len(runnable):
                nextitem = items[runnable[nxt]]
            else:
                nextitem = _KeepCollectors(item) if keep else None
            self._run_one(k, item, nextitem)
            if self.channel.dead:
                return
        self.channel.send({"ev": "batch_done"})

    def _run_one(self, k, item, nextitem):
        self.channel.send({"ev": "start", "i": k})
        self.current, self.reports, self.exc_lines = item, [], {}
        started = time.time()
        try:
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        except BaseException as exc:
            # pytest.exit() or KeyboardInterrupt inside the test: say what
            # happened to it, then let pytest end the session as usual.
            result = _summarize(self.reports, self.exc_lines, self.rootdir)
            result["outcome"] = "error"
            result["message"] = _stop_message(exc)
            result["duration"] = max(result["duration"], time.time() - started)
            self.channel.send(dict({"ev": "result", "i": k}, **result))
            self.current = None
            raise
        result = _summarize(self.reports, self.exc_lines, self.rootdir)
        self.current, self.reports, self.exc_lines = None, [], {}
        self.channel.send(dict({"ev": "result", "i": k}, **result))


def _stop_message(exc):
    if isinstance(exc, pytest.exit.Exception):
        return "pytest.exit: " + _first_line(str(getattr(exc, "msg", exc)))
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = "".join(traceback.format_exception_only(type(exc), exc))
    return "internal error: " + _first_line(text)

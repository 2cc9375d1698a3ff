"""A stand-in for dtest-agent: starts `python -m pytest -p dtest_pytest` the
way the agent does (two pipes passed as DTEST_PYTEST_FDS) and speaks the
plugin's protocol: JSON-line commands in, JSON-line events out."""

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "samples"
PLUGIN_DIR = Path(os.environ.get("DTEST_PYTEST_PLUGIN_DIR") or HERE.parents[1] / "src" / "agent" / "pytest")

# A guard against a hung plugin, never a measurement.
HANG_GUARD_S = 120


def clean_env(extra=None):
    """The environment without the outer run's PYTEST_*/DTEST_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DTEST_"))}
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(PLUGIN_DIR) + (os.pathsep + old if old else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


class Pytest:
    """One pytest process with the plugin in `mode` ("collect" or "worker")."""

    def __init__(self, cwd, mode, *args, env=None):
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        e = clean_env(env)
        if mode is not None:
            e["DTEST_PYTEST_MODE"] = mode
            e["DTEST_PYTEST_FDS"] = "%d,%d" % (cmd_r, ev_w)
        self._out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "dtest_pytest", *args],
            cwd=str(cwd),
            env=e,
            pass_fds=(cmd_r, ev_w),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        os.close(cmd_r)
        os.close(ev_w)
        self._cmd_fd = cmd_w
        self._ev_fd = ev_r
        self._buf = b""
        self._eof = False

    # -- events -------------------------------------------------------------

    def event(self):
        """The next event (a dict), or None at EOF."""
        while b"\n" not in self._buf:
            if self._eof:
                assert self._buf == b"", "a partial line before EOF: %r" % self._buf
                return None
            ready, _, _ = select.select([self._ev_fd], [], [], HANG_GUARD_S)
            assert ready, "no event from the plugin; pytest printed:\n" + self.printed()
            chunk = os.read(self._ev_fd, 65536)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        line, self._buf = self._buf.split(b"\n", 1)
        # Strict UTF-8 and one JSON object a line: what the agent's parser needs.
        ev = json.loads(line.decode("utf-8"))
        assert isinstance(ev, dict) and isinstance(ev.get("ev"), str), line
        return ev

    def events_to_eof(self):
        out = []
        while True:
            ev = self.event()
            if ev is None:
                return out
            out.append(ev)

    def expect(self, name):
        ev = self.event()
        assert ev is not None and ev["ev"] == name, "expected %r, got %r; pytest printed:\n%s" % (
            name,
            ev,
            self.printed(),
        )
        return ev

    # -- commands -----------------------------------------------------------

    def send_raw(self, text):
        os.write(self._cmd_fd, text.encode("utf-8"))

    def send(self, obj):
        self.send_raw(json.dumps(obj) + "\n")

    def run(self, ids):
        """Runs a batch; returns its events up to (without) batch_done."""
        self.send({"cmd": "run", "ids": list(ids)})
        events = []
        while True:
            ev = self.event()
            assert ev is not None, "EOF inside a batch; events %r; pytest printed:\n%s" % (events, self.printed())
            if ev["ev"] == "batch_done":
                return events
            events.append(ev)

    def close_input(self):
        if self._cmd_fd >= 0:
            os.close(self._cmd_fd)
            self._cmd_fd = -1

    def shutdown(self):
        """Asks the worker to finish; returns (events after it, exit status)."""
        self.send({"cmd": "shutdown"})
        self.close_input()
        rest = self.events_to_eof()
        return rest, self.wait()

    def wait(self):
        try:
            return self.proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("pytest did not exit; it printed:\n" + self.printed())

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_input()
        if self._ev_fd >= 0:
            os.close(self._ev_fd)
            self._ev_fd = -1

    def printed(self):
        self._out.seek(0)
        return self._out.read().decode("utf-8", "replace")


def results_of(events):
    """{index: result event} of a batch's events."""
    return {ev["i"]: ev for ev in events if ev["ev"] == "result"}


def collect(cwd, *args, env=None):
    """Runs collect mode; returns its one `collected` event."""
    p = Pytest(cwd, "collect", *args, env=env)
    try:
        events = p.events_to_eof()
        p.wait()
    finally:
        p.kill()
    assert [e["ev"] for e in events] == ["collected"], "%r; pytest printed:\n%s" % (events, p.printed())
    return events[0]

import os

import pytest


def test_worker_identity(worker_id, testrun_uid, request):
    assert os.environ.get("PYTEST_XDIST_WORKER") == "gw3"
    assert worker_id == "gw3"
    assert testrun_uid == "run-42"
    wi = request.config.workerinput
    assert (wi["workerid"], wi["workercount"], wi["testrunuid"]) == ("gw3", 5, "run-42")
    assert request.config.workeroutput == {}
    assert request.config.dtest_sample_saw_workerinput
    if request.config.pluginmanager.hasplugin("xdist"):
        import xdist

        assert xdist.is_xdist_worker(request)
        assert not xdist.is_xdist_controller(request)


def test_not_a_worker(worker_id, testrun_uid, request):
    assert worker_id == "master"
    assert len(testrun_uid) == 32
    assert not hasattr(request.config, "workerinput")
    assert not request.config.dtest_sample_saw_workerinput


def test_plugin_inert(request):
    # Run without DTEST_PYTEST_MODE: the plugin is loaded but does nothing.
    assert "dtest_pytest" in sys_modules()
    assert not hasattr(request.config, "workerinput")
    assert request.config.pluginmanager.get_plugin("dtest-pytest") is None
    assert os.environ.get("PYTEST_XDIST_WORKER") == "gw1"


def sys_modules():
    import sys

    return sys.modules

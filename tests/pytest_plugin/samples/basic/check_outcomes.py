import os

import pytest


def test_pass():
    print("hello from pass")


def test_fail():
    print("about to fail")
    assert 1 == 2


def test_skip():
    pytest.skip("not today")


@pytest.mark.skip(reason="marked skip")
def test_skip_mark():
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0


@pytest.mark.xfail(reason="maybe fixed")
def test_xpass():
    pass


@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup exploded")


def test_setup_error(broken_setup):
    pass


@pytest.fixture
def broken_teardown():
    yield
    print("tearing down")
    raise ValueError("teardown exploded")


def test_teardown_error(broken_teardown):
    pass


def test_fail_and_teardown_error(broken_teardown):
    assert False, "call failed"


def test_stderr():
    import sys

    sys.stderr.write("to stderr\n")


def test_exit_mid_test():
    os._exit(3)


def test_pytest_exit():
    pytest.exit("enough")


def test_undecodable_text():
    # A lone surrogate (as from os.fsdecode of bad bytes) in the message.
    raise ValueError("bad \udcff byte")

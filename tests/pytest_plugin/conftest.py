import shutil

import pytest

from dtest_driver import SAMPLES, Pytest

# The sample projects are run by the driver, inside a copy, never collected here.
collect_ignore = ["samples"]


@pytest.fixture
def sample(tmp_path):
    """Copies samples/NAME to a temporary folder and returns its path."""

    def copy(name):
        dest = tmp_path / name
        shutil.copytree(SAMPLES / name, dest)
        return dest

    return copy


@pytest.fixture
def broken_project(tmp_path):
    """A project where two of four files fail to collect."""
    project = tmp_path / "broken"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\npython_files = check_*.py\n")
    (project / "check_a_import.py").write_text("import no_such_module_dtest\n\ndef test_never():\n    pass\n")
    (project / "check_b_ok.py").write_text("def test_ok():\n    pass\n\ndef test_ok2():\n    pass\n")
    (project / "check_c_syntax.py").write_text("def test_x(:\n    pass\n")
    (project / "check_d_ok.py").write_text("def test_last():\n    pass\n")
    return project


@pytest.fixture
def start():
    """Starts pytest with the plugin (see dtest_driver.Pytest); whatever is
    still running when the test ends is killed."""
    started = []

    def start(cwd, mode, *args, env=None):
        p = Pytest(cwd, mode, *args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()

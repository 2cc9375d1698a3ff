"""Collect mode: one `collected` line listing ids, files, scopes, groups and
collection errors."""

from pathlib import Path

import pytest

from dtest_driver import collect

CLASSES = [
    # (id, scope, group)
    ("check_classes.py::TestAlpha::test_one", "check_classes.py::TestAlpha", None),
    ("check_classes.py::TestAlpha::TestNested::test_deep", "check_classes.py::TestAlpha::TestNested", None),
    ("check_classes.py::test_param[a b]", "check_classes.py", None),
    ("check_classes.py::test_param[café]", "check_classes.py", None),
    ("check_classes.py::test_param[x[1]]", "check_classes.py", None),
    ("check_classes.py::test_param[p::q]", "check_classes.py", None),
    ("check_classes.py::test_slow", "check_classes.py", None),
    ("check_classes.py::test_grouped", "check_classes.py", "db"),
    ("check_classes.py::TestGroupedClass::test_in_group", "check_classes.py::TestGroupedClass", "net"),
]


def entries(ids_scopes_groups, file="check_classes.py"):
    return [{"id": i, "file": file, "scope": s, "group": g} for i, s, g in ids_scopes_groups]


def test_items_with_file_scope_and_group(sample):
    project = sample("basic")
    listing = collect(project, "check_classes.py")
    assert Path(listing["rootdir"]).resolve() == project.resolve()
    assert listing["items"] == entries(CLASSES)
    assert listing["errors"] == []


def test_whole_project_in_collection_order(sample):
    project = sample("basic")
    items = collect(project)["items"]
    files = [it["file"] for it in items]
    assert files == sorted(files)  # check_classes, check_outcomes, check_workers
    assert [it["id"] for it in items[: len(CLASSES)]] == [c[0] for c in CLASSES]
    assert "check_outcomes.py::test_exit_mid_test" in [it["id"] for it in items]
    assert "check_workers.py::test_worker_identity" in [it["id"] for it in items]


def test_files_in_subfolders_are_relative_to_rootdir(sample):
    project = sample("basic")
    (project / "sub").mkdir()
    (project / "check_classes.py").rename(project / "sub" / "check_classes.py")
    listing = collect(project, "sub")
    assert listing["items"][0] == {
        "id": "sub/check_classes.py::TestAlpha::test_one",
        "file": "sub/check_classes.py",
        "scope": "sub/check_classes.py::TestAlpha",
        "group": None,
    }


def test_k_and_m_deselect(sample):
    project = sample("basic")
    listing = collect(project, "check_classes.py", "-k", "not TestAlpha and not test_grouped", "-m", "not slow")
    assert [it["id"] for it in listing["items"]] == [
        "check_classes.py::test_param[a b]",
        "check_classes.py::test_param[café]",
        "check_classes.py::test_param[x[1]]",
        "check_classes.py::test_param[p::q]",
        "check_classes.py::TestGroupedClass::test_in_group",
    ]


def check_broken_listing(listing):
    assert [it["id"] for it in listing["items"]] == [
        "check_b_ok.py::test_ok",
        "check_b_ok.py::test_ok2",
        "check_d_ok.py::test_last",
    ]
    assert [e["id"] for e in listing["errors"]] == ["check_a_import.py", "check_c_syntax.py"]
    assert "ModuleNotFoundError: No module named 'no_such_module_dtest'" in listing["errors"][0]["text"]
    assert "SyntaxError" in listing["errors"][1]["text"]


def test_collection_errors_are_listed_and_the_rest_still_lists(broken_project):
    check_broken_listing(collect(broken_project))


def test_maxfail_does_not_cut_the_listing_short(broken_project):
    check_broken_listing(collect(broken_project, "-x"))


def test_missing_path_is_an_error_of_the_session(sample):
    listing = collect(sample("basic"), "no_such_file.py")
    assert listing["items"] == []
    assert listing["errors"] == [{"id": "", "text": "ERROR: file or directory not found: no_such_file.py"}]


def test_broken_top_conftest_is_reported(tmp_path):
    project = tmp_path / "badconftest"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\npython_files = check_*.py\n")
    (project / "conftest.py").write_text("import pytest\n\ndef oops(:\n")
    (project / "check_x.py").write_text("def test_x():\n    pass\n")
    listing = collect(project)
    assert listing["items"] == []
    assert [e["id"] for e in listing["errors"]] == ["conftest.py"]
    text = listing["errors"][0]["text"]
    assert text.startswith("ImportError while loading conftest '%s'." % (project / "conftest.py"))
    assert "SyntaxError" in text


def test_collect_mode_runs_no_test(sample, tmp_path):
    project = sample("fixtures")
    log = tmp_path / "log.txt"
    listing = collect(project, env={"DTEST_SAMPLE_LOG": str(log)})
    assert len(listing["items"]) == 7
    # No fixture and no test ran; the session still finished normally.
    assert log.read_text().splitlines() == ["sessionfinish"]


def test_xdist_options_do_not_distribute_collection(sample):
    pytest.importorskip("xdist")
    listing = collect(sample("basic"), "check_classes.py", "-n", "2")
    assert [it["id"] for it in listing["items"]] == [c[0] for c in CLASSES]

def pytest_configure(config):
    # What a conftest sees at configure time (xdist-aware suites look here).
    config.dtest_sample_saw_workerinput = hasattr(config, "workerinput")

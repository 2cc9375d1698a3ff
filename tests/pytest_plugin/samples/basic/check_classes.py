import pytest


class TestAlpha:
    def test_one(self):
        pass

    class TestNested:
        def test_deep(self):
            pass


@pytest.mark.parametrize("v", ["a b", "café", "x[1]", "p::q"])
def test_param(v):
    pass


@pytest.mark.slow
def test_slow():
    pass


@pytest.mark.xdist_group("db")
def test_grouped():
    pass


@pytest.mark.xdist_group(name="net")
class TestGroupedClass:
    def test_in_group(self):
        pass

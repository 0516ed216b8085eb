"""The test files' run order (tests/conftest.py ``FILE_ORDER``) names every test file once."""

from pathlib import Path

from tests.conftest import FILE_ORDER


def test_every_test_file_has_one_place_in_the_order():
    files = sorted(p.name for p in Path(__file__).parent.glob("test_*.py"))
    assert sorted(FILE_ORDER) == files, set(files) ^ set(FILE_ORDER)

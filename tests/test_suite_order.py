"""The test files' run order (tests/conftest.py ``FILE_ORDER``): it names every test file once, and the
collection hook puts the files in that order with each file's own tests in theirs."""

from pathlib import Path
from types import SimpleNamespace

from tests.conftest import FILE_ORDER, pytest_collection_modifyitems


def test_every_test_file_has_one_place_in_the_order():
    files = sorted(p.name for p in Path(__file__).parent.glob("test_*.py"))
    assert sorted(FILE_ORDER) == files, set(files) ^ set(FILE_ORDER)


def test_the_hook_sorts_files_and_keeps_each_files_own_order():
    def item(name: str, test: str):
        return SimpleNamespace(path=Path("tests") / name, name=test)

    items = [
        item("test_zz_unlisted.py", "a"),
        item("test_router.py", "b"),
        item("test_engine.py", "second"),
        item("test_router.py", "a"),
        item("test_engine.py", "first"),
    ]
    pytest_collection_modifyitems(None, items)
    assert [(i.path.name, i.name) for i in items] == [
        ("test_engine.py", "second"),
        ("test_engine.py", "first"),
        ("test_router.py", "b"),
        ("test_router.py", "a"),
        ("test_zz_unlisted.py", "a"),  # not listed: last
    ]

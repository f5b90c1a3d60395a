"""The public API: one import path per symbol, ``__all__`` sorted and complete."""

from __future__ import annotations

import pkgutil

import gradchain as gc


def test_all_is_sorted_unique_and_resolves():
    assert list(gc.__all__) == sorted(set(gc.__all__))
    for name in gc.__all__:
        assert hasattr(gc, name), name


def test_every_public_attribute_is_in_all():
    public = {n for n in vars(gc) if not n.startswith("_")}
    assert public - set(gc.__all__) == set()


def test_implementation_modules_are_private():
    modules = [m.name for m in pkgutil.iter_modules(gc.__path__)]
    assert modules
    assert all(name.startswith("_") for name in modules), modules


def test_version_is_a_string():
    assert isinstance(gc.__version__, str) and gc.__version__.count(".") == 2

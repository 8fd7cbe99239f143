"""The lazy public API of ``node.cage``: ``__all__`` is spelled out for tools
that read the source, so it must name exactly what ``__getattr__`` resolves."""

from __future__ import annotations

import importlib

import pytest

import node.cage as cage


def test_all_names_exactly_the_lazy_exports() -> None:
    assert sorted(cage.__all__) == sorted(cage._EXPORTS)
    assert len(set(cage.__all__)) == len(cage.__all__)


def test_no_export_shares_a_submodule_name() -> None:
    """Importing ``node.cage.x`` sets the package attribute ``x`` to the submodule,
    which would shadow a lazy export of the same name."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(cage.__path__)}
    assert not submodules & set(cage._EXPORTS)


@pytest.mark.parametrize("name", sorted(cage._EXPORTS))
def test_each_export_resolves_to_its_module_attribute(name: str) -> None:
    module = importlib.import_module(cage._EXPORTS[name])
    assert getattr(cage, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cage.__getattr__("nope")

"""The lazy public API of ``node.cage``: ``__all__`` is spelled out for tools
that read the source, so it must name exactly what ``__getattr__`` resolves."""

from __future__ import annotations

import importlib

import pytest

import node.cage as cage


def test_all_names_exactly_the_lazy_exports() -> None:
    assert sorted(cage.__all__) == sorted(cage._EXPORTS)
    assert len(set(cage.__all__)) == len(cage.__all__)


# Known defect: the function ``replay`` lives in the submodule ``node.cage.replay``;
# once that submodule is imported, the import system sets ``node.cage.replay`` to
# the module, which then shadows the lazy export of the function.
_SHADOWED_BY_SUBMODULE = {"replay"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="shadowed by the submodule of the same name"))
    if name in _SHADOWED_BY_SUBMODULE else name
    for name in sorted(cage._EXPORTS)
])
def test_each_export_resolves_to_its_module_attribute(name: str) -> None:
    module = importlib.import_module(cage._EXPORTS[name])
    assert getattr(cage, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cage.__getattr__("nope")

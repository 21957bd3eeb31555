"""The reconstruction package's layout stays documented and reachable from its facade."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_code_map_names_every_reconstruction_module():
    doc = (ROOT / "docs" / "reconstruction.md").read_text(encoding="utf-8")
    code_map = doc[doc.index("## Code map") :]
    code_map = code_map[: code_map.index("\n## ", 1)]
    modules = sorted(p.name for p in (ROOT / "orchestrator" / "reconstruction").glob("*.py") if p.name != "__init__.py")
    assert modules, "no modules found"
    assert [m for m in modules if f"`reconstruction/{m}`" not in code_map] == []


def test_facade_reexports_the_package_api():
    import orchestrator.reconstruct as facade
    import orchestrator.reconstruction as package

    assert facade.__all__ == package.__all__
    assert all(getattr(facade, name) is getattr(package, name) for name in package.__all__)

"""The API reference (docs/api/*.md, rendered by mkdocstrings from the docstrings) covers every public name.

A module's public names are its __all__, or else the classes and functions it defines without a leading
underscore. A name is covered when a `::: module` directive renders it (no `members:` list, or the name in it);
a name that the module re-exports from another public module must also be named on the module's page as
`module.name`, and be covered where it is defined."""

import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
PUBLIC_MODULES = [
    "fused_ce",
    "fused_ce.functional",
    "fused_ce.modules",
    "fused_ce.autograd",
    "fused_ce.linear",
    "fused_ce.parallel",
    "fused_ce.testing",
    "fused_ce.integrations.transformers",
    "fused_ce.check",
]
_DIRECTIVE = re.compile(r"^::: (?P<path>[\w.]+)\n(?P<options>(?:[ \t]+\S.*\n)*)", re.M)


def public_names(module):
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def directives():
    """{rendered path: (page, members list or None for all)} over the API pages."""
    found = {}
    for page in sorted(API.glob("*.md")):
        for m in _DIRECTIVE.finditer(page.read_text()):
            options = m.group("options")
            members = None
            listed = re.search(r"^\s+members:\n((?:\s+- \S+\n)+)", options, re.M)
            if listed:
                members = re.findall(r"- (\S+)", listed.group(1))
            found[m.group("path")] = (page, members)
    return found


def rendered(module_name, name, found):
    if f"{module_name}.{name}" in found:
        return True
    if module_name in found:
        members = found[module_name][1]
        return members is None or name in members
    return False


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module_name):
    module = importlib.import_module(module_name)
    found = directives()
    assert module_name in found, f"no `::: {module_name}` directive in docs/api/*.md"
    page_text = found[module_name][0].read_text()
    missing = []
    for name in public_names(module):
        obj = getattr(module, name)
        home = (
            getattr(obj, "__module__", module_name)
            if (inspect.isclass(obj) or inspect.isfunction(obj))
            else module_name
        )
        if home != module_name and home in PUBLIC_MODULES:  # a re-export: named here, rendered at home
            if f"`{module_name}.{name}`" not in page_text or not rendered(home, name, found):
                missing.append(name)
        elif not rendered(module_name, name, found):
            missing.append(name)
    assert not missing, f"{module_name}: public names missing from the API reference: {missing}"


def test_api_pages_name_only_public_modules():
    """Private modules are internal and move; the reference renders only the public paths."""
    for path in directives():
        assert not any(part.startswith("_") for part in path.split(".")), path
        assert any(path == m or path.startswith(m + ".") for m in PUBLIC_MODULES), path


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in API.glob("*.md"):
        assert f"api/{page.name}" in nav, page.name

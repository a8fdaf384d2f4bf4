"""The README's two set-up commands are what CI runs, and the first installs all the second needs.

``.ci/run`` (leg 1) reads the commands with ``.ci/readme_commands.py`` and runs them in a fresh
venv; these tests read them the same way and check the contract without installing anything.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "PyYAML"}


def _commands_module():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The distribution name of a requirement such as ``'setuptools>=77'`` or ``pytest``."""
    return re.split(r"[<>=!~\[; ]", requirement.strip("'\""), maxsplit=1)[0].lower().replace("_", "-")


def test_ci_runs_the_readme_commands_as_written():
    ci = (ROOT / ".ci" / "run").read_text()
    for name in ("install", "test"):
        assert f"python3 .ci/readme_commands.py {name}" in ci
    assert re.search(r'bash -c "\$INSTALL"\s+echo "ci: \\\$ \$TEST"\s+bash -c "\$TEST"', ci), \
        "leg 1 must run the install command, then the test command, with nothing in between"
    leg1 = ci.split("leg 1:", 1)[1].split("leg 2:", 1)[0]
    assert "pip install" not in leg1, "leg 1 installs nothing but what the README's command installs"


def test_install_command_brings_what_the_test_command_needs():
    commands = _commands_module()
    install, test = commands.readme_command("install"), commands.readme_command("test")
    assert test == "python3 -m pytest -q"
    installs = [shlex.split(part) for part in install.split("&&")]
    editable = [args for args in installs if args[:2] == ["pip", "install"] and "-e" in args]
    assert len(editable) == 1, install
    target = editable[0][editable[0].index("-e") + 1]
    extras = re.fullmatch(r"\.\[(.*)\]", target)
    assert extras and "test" in extras.group(1).split(","), f"the install command must install '.[test]': {target}"
    test_extra = {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["test"]}
    assert "pytest" in test_extra


def test_build_requirements_are_in_the_install_command():
    """``--no-build-isolation`` builds with what is installed: the command must install the build requirements."""
    install = _commands_module().readme_command("install")
    assert "--no-build-isolation" in install
    named = {_name(word) for word in shlex.split(install.replace("&&", " "))}
    for requirement in _pyproject()["build-system"]["requires"]:
        if _name(requirement) != "wheel":  # setuptools >= 70.1 builds wheels itself
            assert _name(requirement) in named, requirement


OPTIONAL_CHECKS = ("importorskip", "find_spec")  # a test that asks first skips without the package


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports, less those it checks for first
    (``pytest.importorskip("x")``, ``importlib.util.find_spec("x")``)."""
    tree = ast.parse(path.read_text(), str(path))
    names, optional = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in OPTIONAL_CHECKS
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            optional.add(node.args[0].value.split(".")[0])
    return names - optional


def test_every_package_the_tests_import_is_in_the_project_metadata():
    """A fresh venv holds only what pyproject.toml names: a test importing anything else fails there,
    unless it checks for the package first and skips."""
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"gmbound", "__future__"}
    missing = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for module in _imported_modules(path) - local - set(sys.stdlib_module_names):
            if DISTRIBUTION.get(module, module).lower() not in declared:
                missing.setdefault(module, []).append(path.name)
    assert not missing, f"tests import packages pyproject.toml does not declare: {missing}"


def test_a_missing_marker_is_a_clear_error(tmp_path):
    commands = _commands_module()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- setup: install -->\n```bash\npip install a\n```\n\n```bash\npython3 -m pytest -q\n```\n")
    assert commands.readme_command("install", readme) == "pip install a"
    with pytest.raises(ValueError, match="setup: test.*found 0"):
        commands.readme_command("test", readme)
    readme.write_text("<!-- setup: test -->\n```bash\npip install a\npython3 -m pytest -q\n```\n")
    with pytest.raises(ValueError, match="one command line"):
        commands.readme_command("test", readme)

"""The README says only what is true of the repository: every test it names exists, every row of its table of
guarantees cites at least one test function, and the files, modules, commands and make targets it names exist.
(Whether a cited test exercises its row is for a reviewer to read; that it exists is checked here.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.__main__ import ENTRY_POINTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUARANTEES = "| guarantee | how it is tested |"
TEST_REF = re.compile(r"tests/[\w/]+\.py(?:::\w+)?")


def defined_tests(path: Path) -> set[str]:
    """Names of the functions (module level or in a class) defined in a test file."""
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def guarantee_rows(text: str) -> list[str]:
    """The rows of the README's table of guarantees (after its header and separator, up to the first blank line)."""
    lines = text[text.index(GUARANTEES):].splitlines()[2:]
    return [line for line in lines[:next(i for i, line in enumerate(lines) if not line.strip())]]


@pytest.mark.parametrize("ref", sorted(set(TEST_REF.findall(README))))
def test_every_test_the_readme_names_exists(ref):
    file, _, name = ref.partition("::")
    assert (ROOT / file).is_file(), f"{file} does not exist"
    if name:
        assert name in defined_tests(ROOT / file), f"{file} defines no {name}"


def test_every_guarantee_cites_a_test_function():
    rows = guarantee_rows(README)
    assert len(rows) >= 10
    uncited = [row[:100] for row in rows if not any("::" in ref for ref in TEST_REF.findall(row.split(" | ")[-1]))]
    assert not uncited, "guarantees without a test:\n" + "\n".join(uncited)


def test_the_files_the_readme_names_exist():
    named = set(re.findall(r"\]\(((?!https?:)[^)#]+)\)", README))  # markdown links
    named |= set(re.findall(r"(?<![\w./-])((?:docs|scripts|deploy|conf|tests|pipeline)/[\w./-]*\w)", README))
    missing = sorted(p for p in named if "<" not in p and "*" not in p and not (ROOT / p).exists()
                     and not any((ROOT / p).parent.glob(Path(p).name + "*")))
    assert not missing, f"named in the README, not in the repository: {missing}"


def test_the_commands_modules_and_make_targets_the_readme_names_exist():
    commands = set(re.findall(r"python -m pipeline (\w+)", README))
    assert commands and commands <= set(ENTRY_POINTS), sorted(commands - set(ENTRY_POINTS))
    modules = set(re.findall(r"python -m (pipeline\.[\w.]+)", README))
    missing = [m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file()
               and not (ROOT / m.replace(".", "/") / "__main__.py").is_file()]
    assert not missing, missing
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = set(re.findall(r"`make ([\w-]+)", README)) | set(re.findall(r"&& make ([\w-]+)", README))
    assert named and named <= targets, sorted(named - targets)

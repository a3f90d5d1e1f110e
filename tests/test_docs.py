"""What the docs say about the repository holds: the tests they name exist, links resolve.

The guarantees table names the test behind each guarantee; a test renamed or deleted
would leave a claim that nothing checks any more. A test is named in a code span:

- ```test_persistence.py::test_name``` (a class, or ``Class::method``, works too; a
  trailing ``*`` matches any test whose name starts so; ``[params]`` are ignored);
- ```test_disk_full.py```: the whole file;
- ```test_name``` alone: a test of the file named last before it in the same table cell
  or paragraph, or, when none is, of any test file.

Files are read with ``ast``, never imported: a test is found if the file defines it.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO_ROOT, "tests")
DOCS = [
    "README.md",
    *sorted(
        os.path.join("docs", name)
        for name in os.listdir(os.path.join(REPO_ROOT, "docs"))
        if name.endswith(".md")
    ),
]

FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
TEST_FILE = re.compile(r"test_\w+\.py")
TEST_NAME = re.compile(r"(Test\w*|test_\w*)\*?(\[[^\]]*\])?")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class NamedTest:
    doc: str
    text: str  # as written in the doc
    file: str | None  # None: any test file
    path: tuple[str, ...]  # ("test_x",) or ("Class", "test_method"); () for a whole file


def _text_without_code_blocks(doc: str) -> str:
    with open(os.path.join(REPO_ROOT, doc), encoding="utf-8") as file:
        return FENCED_BLOCK.sub("", file.read())


def _contexts(text: str) -> Iterator[str]:
    """Each table cell, and each paragraph that is not a table: where a file name holds."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if lines and all(line.lstrip().startswith("|") for line in lines):
            for line in lines:
                yield from UNESCAPED_PIPE.split(line)
        else:
            yield block


def named_tests(doc: str) -> list[NamedTest]:
    """Every test ``doc`` names, with the file each bare name belongs to."""
    found = []
    for context in _contexts(_text_without_code_blocks(doc)):
        last_file = None
        for span in CODE_SPAN.findall(context):
            file, _, rest = span.partition("::")
            if TEST_FILE.fullmatch(file):
                last_file = file
                path = tuple(rest.split("::")) if rest else ()
                found.append(NamedTest(doc, span, file, path))
            elif not rest and TEST_NAME.fullmatch(span):
                found.append(NamedTest(doc, span, last_file, (span,)))
    return found


@functools.cache
def _definitions(file: str) -> dict[str, set[str]]:
    """Top-level functions and classes of a test file, each class with its methods."""
    with open(os.path.join(TESTS, file), encoding="utf-8") as source:
        tree = ast.parse(source.read(), file)
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    return names


def _test_files() -> list[str]:
    return sorted(name for name in os.listdir(TESTS) if TEST_FILE.fullmatch(name))


def _defines(file: str, path: tuple[str, ...]) -> bool:
    """Whether ``file`` defines ``path`` (``*`` at the end: some name that starts so)."""
    parts = [re.sub(r"\[.*\]$", "", part) for part in path]
    candidates = _definitions(file)
    for depth, part in enumerate(parts):
        matches = [name for name in candidates if fnmatch.fnmatchcase(name, part)]
        if not matches:
            return False
        if depth + 1 < len(parts):
            if len(matches) != 1:
                return False  # a pattern in the middle of a path says nothing definite
            candidates = {method: set() for method in candidates[matches[0]]}
    return True


def _problem(reference: NamedTest) -> str | None:
    where = f"{reference.doc}: `{reference.text}`"
    if reference.file is None:
        if not any(_defines(file, reference.path) for file in _test_files()):
            return f"{where} is defined in no tests/test_*.py"
        return None
    if not os.path.isfile(os.path.join(TESTS, reference.file)):
        return f"{where}: there is no tests/{reference.file}"
    if reference.path and not _defines(reference.file, reference.path):
        return f"{where}: tests/{reference.file} defines no {'::'.join(reference.path)}"
    return None


def test_every_test_the_docs_name_exists() -> None:
    references = [reference for doc in DOCS for reference in named_tests(doc)]
    problems = [problem for reference in references if (problem := _problem(reference))]
    assert problems == [], "the docs name tests that don't exist:\n" + "\n".join(problems)


def test_every_guarantee_names_the_test_that_shows_it() -> None:
    rows = [
        line
        for line in _text_without_code_blocks("docs/guarantees.md").splitlines()
        if line.startswith("| ") and not line.startswith("| failure |")
    ]
    assert len(rows) > 20, "the guarantees table was not found"
    unbacked = [row for row in rows if not named_tests_in(row)]
    assert unbacked == [], "guarantees that name no test:\n" + "\n".join(unbacked)


def named_tests_in(text: str) -> list[str]:
    """The code spans of ``text`` that name a test or a test file."""
    return [
        span
        for span in CODE_SPAN.findall(text)
        if TEST_FILE.fullmatch(span.partition("::")[0]) or TEST_NAME.fullmatch(span)
    ]


def _anchors(path: str) -> set[str]:
    """The anchors GitHub makes of a markdown file's headings."""
    with open(path, encoding="utf-8") as file:
        headings = re.findall(r"^#+\s+(.*?)\s*$", FENCED_BLOCK.sub("", file.read()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = []
    for doc in DOCS:
        for target in LINK.findall(_text_without_code_blocks(doc)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:: not ours to check offline
            path, _, anchor = target.partition("#")
            here = os.path.join(REPO_ROOT, doc)
            resolved = os.path.normpath(os.path.join(os.path.dirname(here), path)) if path else here
            if path and not os.path.exists(resolved):
                problems.append(f"{doc}: ({target}) points to a missing file")
            elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
                problems.append(f"{doc}: ({target}) points to no heading of that file")
    assert problems == [], "broken links in the docs:\n" + "\n".join(problems)

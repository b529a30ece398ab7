"""Every ```python block of README.md and docs/ runs: a page's blocks in order, in one namespace, in a tmp folder.

A block that is only shown (a fragment, code that needs a GPU or the user's files) is fenced ```py instead, which
renders the same and is not run (docs/development.md).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line, code) of each ```python block, in order; line counts from 1 at the fence."""
    text = page.read_text()
    return [(text.count("\n", 0, block.start()) + 1, block.group(1)) for block in BLOCK.finditer(text)]


def test_the_pages_have_blocks_to_run():
    assert python_blocks(ROOT / "README.md") and len([page for page in PAGES if python_blocks(page)]) >= 5


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: str(page.relative_to(ROOT))
)
@pytest.mark.slow
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the blocks write land here
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)

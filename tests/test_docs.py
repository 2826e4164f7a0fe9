"""The README a newcomer reads in two minutes, and the docs it links: short,
every relative link resolving, the generated blocks where their writers expect
them (bench/readme_table.py, fastrnn.settings.markdown_table)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))


def _read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def test_readme_is_short_and_links_the_docs():
    text = _read("README.md")
    assert len(text.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"]({page})" in text, f"README.md does not link {page}"
    for needed in ("make test", "make bench", "pip install", "fastrnn.LSTM("):
        assert needed in text


def test_beyond_table_names_existing_tests():
    """Every row of the README's "Beyond torch.nn" table names a test file that exists."""
    text = _read("README.md")
    table = text.split("## Beyond torch.nn")[1].split("\n## ")[0]
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| what") and "---" not in l]
    assert len(rows) >= 6
    for row in rows:
        tests = re.findall(r"`(tests/[^`]+\.py)`", row)
        assert tests and all(os.path.exists(os.path.join(ROOT, t)) for t in tests), row


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(page)):
        if "://" in target:
            continue
        assert os.path.exists(os.path.normpath(os.path.join(folder, target))), f"{page}: {target}"


@pytest.mark.parametrize("page,start,end", [
    ("README.md", "<!-- headline:start -->", "<!-- headline:end -->"),
    ("docs/measurements.md", "<!-- bench:start -->", "<!-- bench:end -->"),
    ("docs/backends.md", "<!-- settings:start -->", "<!-- settings:end -->"),
])
def test_generated_blocks_have_their_markers(page, start, end):
    text = _read(page)
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)


def test_readme_table_writes_both_pages(tmp_path, monkeypatch):
    """bench/readme_table.py on a copy of the pages: the headline into the README
    (its chart linked from the top folder), every table into docs/measurements.md
    (linked one folder up), nothing else of either page changed."""
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("readme_table", os.path.join(ROOT, "bench", "readme_table.py"))
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    for page in ("README.md", "docs/measurements.md"):
        os.makedirs(tmp_path / os.path.dirname(page), exist_ok=True)
        (tmp_path / page).write_text(_read(page))
    rt.ROOT, real = tmp_path, rt.ROOT
    try:
        (tmp_path / "bench").symlink_to(os.path.join(ROOT, "bench"))
        assert rt.main() == 0
    finally:
        rt.ROOT = real
    readme, meas = (tmp_path / "README.md").read_text(), (tmp_path / "docs/measurements.md").read_text()
    assert readme.split("<!-- headline:start -->")[0] == _read("README.md").split("<!-- headline:start -->")[0]
    head = readme.split("<!-- headline:start -->")[1].split("<!-- headline:end -->")[0]
    body = meas.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0]
    if "No results yet" not in head:
        assert "| backend | device | final perplexity |" in head and "](bench/results/" in head
    assert "](bench/results/" not in body

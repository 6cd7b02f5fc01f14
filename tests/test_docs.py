"""The README and docs/ checked against the code: the README stays a short front door, the study
field reference equals what docs/gen_config_table.py renders from prompt_core/config.py, every
registered table and view is listed in docs/tables.md, every relative link and file path named
in the pages exists, and every ``prompt-transfer`` command they show is a real command.
(docs/querying.md's snippets are run and docs/tables.md's DDL is compared with the code in
tests/test_analytics.py.)"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return FENCE.sub("", text)


def code_blocks(text: str, lang: str) -> list[str]:
    return [code for lg, code in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
            if lg == lang]


# -- the README is a front door ----------------------------------------------------------------


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n < 250, f"README.md has {n} lines; move reference material to docs/"


def test_readme_starts_with_what_the_project_is():
    lines = README.read_text().splitlines()
    assert lines[0] == "# prompt-transfer" and lines[1] == ""
    first = lines[2]
    assert first.startswith("prompt-transfer measures how well soft prompts transfer"), first
    # one paragraph of prose, then the heatmap picture
    end = lines.index("", 2)
    paragraph = lines[2:end]
    assert not any(ln.startswith(("#", "```", "|", "!", "-", "*")) for ln in paragraph)
    assert "Su et al." in " ".join(paragraph)
    assert re.fullmatch(r"!\[[^\]]+\]\(docs/img/heatmap\.png\)", lines[end + 1]), lines[end + 1]


def test_heatmap_picture_is_small():
    picture = DOCS / "img" / "heatmap.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size < 300_000


def test_readme_set_up_and_tour():
    text = README.read_text()
    block = code_blocks(text, "bash")[0].splitlines()
    assert [ln.split("#")[0].strip() for ln in block] == ["make demo", "make test"]
    assert "Both create `.venv`" in text
    tour = text[text.index("## A five-minute tour"):]
    for needle in ("prefect server start", "PREFECT_API_URL=http://127.0.0.1:4200/api",
                   "prompt-transfer query", ".venv/bin/prompt-transfer",
                   "source .venv/bin/activate"):
        assert needle in tour, needle


def test_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", README.read_text()))
    assert linked == {f"docs/{p.name}" for p in DOCS.glob("*.md")}


# -- generated and checked pages --------------------------------------------------------------


def gen_config_table():
    spec = importlib.util.spec_from_file_location("gen_config_table",
                                                  DOCS / "gen_config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_field_reference_is_generated_from_the_config_models():
    gen = gen_config_table()
    page = (DOCS / "study-config.md").read_text()
    assert gen.current(page) == gen.render(), (
        "docs/study-config.md is stale: run .venv/bin/python docs/gen_config_table.py")


def test_study_field_reference_covers_every_field():
    from prompt_core.config import StudyConfig

    gen = gen_config_table()
    text = gen.render()
    for path, model in gen.sections(StudyConfig):
        body = text.split(f"### `{path}`\n" if path else "### The study (top level)\n")[1]
        body = body.split("\n### ")[0]
        for name, field in model.model_fields.items():
            row = re.search(rf"^\| `{name}` \|.*$", body, re.M)
            assert row, (path, name)
            if field.description:
                assert " ".join(field.description.split()) in row[0].replace("\\|", "|")


def test_tables_page_lists_every_table_and_view():
    from tasks.tables import TABLES, VIEWS

    page = (DOCS / "tables.md").read_text()
    for name, spec in TABLES.items():
        row = re.search(rf"^\| `{name}` \|.*\| (.*) \|$", page, re.M)
        assert row, f"table {name} is not in the table list of docs/tables.md"
        if spec.key_column:
            assert row[1] == f"`{spec.key_column}`", (name, row[1])
    views = "\n".join(ln for ln in page.splitlines() if ln.startswith("| `"))
    for name in VIEWS:
        assert f"`{name}`" in views, f"view {name} is not in the view list of docs/tables.md"


# -- links, paths and commands -----------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.*)$", prose(page.read_text()), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} (no such file)"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: link to {target} (no such heading)"


REPO_PATH = re.compile(r"`((?:prompt_core|tasks|flows|tests|deployments|docs)/[\w./-]+)"
                       r"(?::\w+)?`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_files_exist(page):
    for path in REPO_PATH.findall(page.read_text()):
        assert (REPO / path).exists(), f"{page.name} names {path}, which does not exist"


def test_shown_commands_exist():
    import typer

    from flows.cli import app

    commands = set(typer.main.get_command(app).commands)
    shown = 0
    for page in PAGES:
        for block in code_blocks(page.read_text(), "bash"):
            for line in block.splitlines():
                if not line.startswith("prompt-transfer "):
                    continue
                argv = [a for a in shlex.split(line, comments=True)[1:] if a != "--debug"]
                assert argv[0] in commands, f"{page.name}: {line}"
                shown += 1
    assert shown >= 20

"""The benchmarks' shared harness (benchmarks/harness.py): results files, the docs' generated sections, goals."""

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "harness.py")


@pytest.fixture
def harness(monkeypatch, tmp_path):
    """The harness, writing into a scratch repository (tmp_path) instead of this one."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module("harness")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "benchmarks" / "results")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# title\n\n<!-- other:begin -->\nold\n<!-- other:end -->\n")
    (tmp_path / "docs" / "area.md").write_text("# area\n\nbefore\n<!-- demo:begin -->\nold figures\n"
                                               "<!-- demo:end -->\nafter\n")
    return module


def test_parser_takes_quick_and_shows_the_docstring(harness):
    parser = harness.parser("What the benchmark measures.", "short run (CI)")
    assert parser.parse_args(["--quick"]).quick and not parser.parse_args([]).quick
    assert "What the benchmark measures." in parser.format_help() and "short run (CI)" in parser.format_help()


def test_quick_run_writes_quick_files_and_leaves_the_docs_alone(harness, tmp_path):
    page = tmp_path / "docs" / "area.md"
    before = page.read_text()
    drawn = []
    assert harness.Bench("demo", quick=True).publish({"x": 1}, "| a |\n", plot=drawn.append) is None
    results = tmp_path / "benchmarks" / "results"
    assert json.loads((results / "demo-quick.json").read_text()) == {"x": 1}
    assert (results / "demo-quick.md").read_text() == "| a |\n"
    assert drawn == [results / "demo-quick.png"]
    assert page.read_text() == before and not (results / "demo.json").exists()


def test_full_run_replaces_its_section_on_the_page_that_holds_it(harness, tmp_path):
    written = harness.Bench("demo-run", section="demo").publish({"inf": float("inf")}, "new table\n",
                                                               figure="the curve")
    assert written == tmp_path / "docs" / "area.md"
    assert written.read_text() == ("# area\n\nbefore\n<!-- demo:begin -->\nnew table\n\n"
                                   "![the curve](../benchmarks/results/demo-run.png)\n<!-- demo:end -->\nafter\n")
    assert (tmp_path / "README.md").read_text().count("old") == 1  # another section, untouched


def test_a_figure_on_the_readme_is_linked_from_the_repository_root(harness, tmp_path):
    harness.write_section("other", "t", figure=tmp_path / "benchmarks" / "results" / "o.png", alt="o")
    assert "![o](benchmarks/results/o.png)" in (tmp_path / "README.md").read_text()


def test_missing_markers_write_nothing(harness, tmp_path):
    pages = {p: p.read_text() for p in harness.pages()}
    assert harness.write_section("absent", "table\n") is None
    assert harness.Bench("absent").publish([], "table\n") is None
    assert {p: p.read_text() for p in harness.pages()} == pages


def test_docs_false_keeps_a_partial_full_run_out_of_the_docs(harness, tmp_path):
    before = (tmp_path / "docs" / "area.md").read_text()
    assert harness.Bench("demo").publish({}, "partial\n", docs=False) is None
    assert (tmp_path / "docs" / "area.md").read_text() == before


def test_goal_table_formats_values_columns_and_misses(harness):
    goals = [harness.goal("ratio", 0.5, "< 1", True, model="a"),
             harness.goal("peak (MiB)", 250.0, "<= 192", False, model="m")]
    assert goals[1] == {"goal": "peak (MiB)", "value": 250.0, "target": "<= 192", "met": False, "model": "m"}
    assert harness.goal_table(goals) == ("| goal | value | target | met |\n|---|---:|---|---|\n"
                                         "| ratio | 0.500 | < 1 | yes |\n| peak (MiB) | 250.000 | <= 192 | **no** |\n")
    table = harness.goal_table(goals, lambda g: f"{g['value']:.0f}x", columns=("model", "value"))
    assert table.splitlines()[0] == "| goal | model | value | met |"
    assert table.splitlines()[1] == "|---|---|---:|---|"
    assert table.splitlines()[3] == "| peak (MiB) | m | 250x | **no** |"
    assert harness.goal_table([{"goal": "claim", "met": True}], columns=()).splitlines()[2] == "| claim | yes |"


def test_goal_summary_names_the_missed_goals(harness):
    goals = [harness.goal("a", 1, "", True), harness.goal("b", 2, "", False)]
    assert harness.goal_summary(goals) == "1/2 goals met; missed: ['b']"
    assert harness.goal_summary(goals[:1]) == "1/1 goals met"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_writes_through_the_harness(script):
    """No script writes its results, docs section or matplotlib backend by hand any more."""
    text = script.read_text()
    assert "from harness import" in text
    for by_hand in ("RESULTS /", "matplotlib.use(", "readme_table", '"--quick", action='):
        assert by_hand not in text, f"{script.name} still has {by_hand!r}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_section_a_benchmark_writes_is_on_a_page(script):
    """A full run must land its figures: the README or a docs page holds the markers each script names."""
    pages = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    calls = re.findall(r"Bench\((.*)$", script.read_text(), re.M)
    assert calls, f"{script.name} does not publish through harness.Bench"
    for call in calls:
        name = (re.search(r'section="([\w-]+)"', call) or re.match(r'"([\w-]+)"', call))[1]
        assert f"<!-- {name}:begin -->" in pages and f"<!-- {name}:end -->" in pages, (script.name, name)

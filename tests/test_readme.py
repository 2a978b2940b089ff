"""Every command and snippet of the README and of the pages in docs/ runs as written (in a scratch folder that
links the repo's .venv, examples/ and benchmarks/), so a newcomer's first copy-paste works; every relative link
of those pages leads to a file, and every page is linked from the README.

Each fenced block is classified below by its first line; a new block fails until it is classified.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")

# first line of a block -> how it runs: "fast" (default suite), "slow" (pytest -m slow), or why it does not run
BLOCKS = {
    "make demo": "not run here: CI runs `make demo` and `make test` themselves (.ci/run)",
    ".venv/bin/pocketlearn devices": "fast",
    ".venv/bin/pocketlearn plan --model efficientnet-lite0": "fast",
    "import torch": "fast",
    ".venv/bin/pocketlearn fed simulate examples/phones.toml": "fast",
    ".venv/bin/pocketlearn fed simulate examples/synthetic.toml": "fast",
    ".venv/bin/pocketlearn fed simulate examples/phones.toml --fresh --set asynchronous.buffer=10": "fast",
    ".venv/bin/pocketlearn fed simulate benchmarks/configs/anchor-small.toml --engine ray --fresh": "slow",
    "from pocketlearn.federated.config import parse_config": "fast",
    "pocketlearn fed partition examples/devices.toml --out clients/": (
        "not run here: a recipe across machines (a server, devices with their own keys); its steps run in "
        "tests/federated/test_flower.py (-m slow)"),
    "pocketlearn llm finetune --user Hamlet/HAMLET --method lora --device phone-4g": "slow",
    "pocketlearn llm finetune --user Hamlet/HAMLET --model gemma3-270m --base q4": "slow",
    ".venv/bin/pocketlearn export digits-mlp --method lora --option rank=4 --option train_head=true --batch 16 "
    "--out train.pte": "fast",
    "src/pocketlearn/": "not run: the layout, not a command",
    "apt install chromium": "not run here: needs root; CI installs these packages (.ci/run)",
    ".venv/bin/pocketlearn ui apps": "fast",
    ".venv/bin/pocketlearn ui crawl": "slow",
    "ray start --head --port 6379": ("not run here: a recipe across machines; tests/federated/test_ray_cluster.py "
                                     "runs it with two nodes on one machine (-m slow)"),
}


def pages() -> list[Path]:
    """The README and the pages it leads to: one per area, in docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_blocks() -> list[tuple[str, int, str, str]]:
    """(page, line, language, code) of every fenced block of the README and the docs pages."""
    found = []
    for page in pages():
        text, name = page.read_text(), page.relative_to(ROOT).as_posix()
        found += [(name, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    return found


def _kind(code: str) -> str:
    first = code.splitlines()[0]
    for head, kind in BLOCKS.items():
        if first.startswith(head):
            return kind
    return f"unclassified: add the block starting {first!r} to BLOCKS in {__file__}"


def _params():
    for page, line, lang, code in readme_blocks():
        kind = _kind(code)
        marks = [pytest.mark.slow] if kind == "slow" else []
        if kind not in ("fast", "slow") and not kind.startswith("unclassified"):
            marks.append(pytest.mark.skip(reason=kind))
        yield pytest.param(lang, code, kind, id=f"{page}:line{line}-{lang or 'text'}", marks=marks)


@pytest.fixture
def scratch(tmp_path):
    """A folder that looks like the repo's root to a command (its .venv, examples, benchmarks), nothing else."""
    for name in (".venv", "examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "POCKETLEARN_PROGRESS_EVERY": "10"}
    return tmp_path, env


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("lang", "code", "kind"), list(_params()))
def test_readme_block_runs_as_written(lang, code, kind, scratch):
    assert not kind.startswith("unclassified"), kind
    folder, env = scratch
    if lang == "python":
        command = [sys.executable, "-c", code]
    else:
        assert lang == "bash", f"a {lang!r} block: classify it as not run, or make it bash or python"
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1700)
    assert result.returncode == 0, f"{code}\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n" \
                                   f"{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def test_every_readme_block_is_classified():
    unclassified = [(page, line, _kind(code)) for page, line, _, code in readme_blocks()
                    if _kind(code).startswith("unclass")]
    assert not unclassified, unclassified


def test_relative_links_lead_to_files():
    broken = []
    for page in pages():
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z+]*:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target).resolve() for target in LINK.findall((ROOT / "README.md").read_text())}
    assert [p.name for p in pages()[1:] if p.resolve() not in linked] == []


def test_generated_sections_are_closed():
    """A benchmark replaces what lies between its markers: a lost end marker would swallow the rest of a page."""
    for page in pages():
        text = page.read_text()
        for name in re.findall(r"<!-- ([\w-]+):begin -->", text):
            assert text.count(f"<!-- {name}:begin -->") == text.count(f"<!-- {name}:end -->") == 1, (page, name)
            assert text.index(f"<!-- {name}:begin -->") < text.index(f"<!-- {name}:end -->"), (page, name)

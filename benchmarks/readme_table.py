"""Put a benchmark's generated table into README.md between its markers (``<!-- NAME:begin -->`` ... end)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def write_readme_section(name: str, table: str) -> bool:
    """Replace what lies between the markers; False (README untouched) when they are missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = README.read_text()
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return False
    README.write_text(text[:start + len(begin)] + "\n" + table.rstrip("\n") + "\n" + text[stop:])
    return True

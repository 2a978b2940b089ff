"""The example run configs that ship inside the package, so the commands work outside a checkout too.

``pocketlearn fed simulate phones`` runs the bundled ``phones.toml``; a path that exists always wins.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pocketlearn.errors import ConfigError


def examples_dir() -> Path:
    """The folder of bundled examples (the repository's ``examples/`` links to it)."""
    return Path(str(files("pocketlearn") / "examples"))


def example_names() -> list[str]:
    return sorted(p.stem for p in examples_dir().glob("*.toml"))


def config_path(path: str | Path) -> Path:
    """``path`` if it exists, else the bundled example it names (``phones`` or ``examples/phones.toml``).

    Raises ConfigError naming the bundled examples when it is neither.
    """
    path = Path(path)
    if path.is_file():
        return path
    bundled = examples_dir() / f"{path.name.removesuffix('.toml')}.toml"
    if not path.exists() and path.parent in (Path("."), Path("examples")) and bundled.is_file():
        return bundled
    problem = "is a folder" if path.is_dir() else "does not exist"
    raise ConfigError(f"config file {path} {problem}; give a TOML file's path, or one of the bundled examples "
                      f"by name ({', '.join(example_names())}), e.g. `pocketlearn fed simulate phones`")

"""Tables of a HAR run, as rich tables (CLI) and Markdown (benchmark, README)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from pocketlearn.apps.har.federated import FederatedHarResult
from pocketlearn.apps.har.personalize import HarResult
from pocketlearn.devices import format_bytes


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def summary_rows(result: HarResult) -> list[list[str]]:
    """Per (model, method): mean accuracy before/after, users improved, measured peak, fit per device."""
    devices = list(dict.fromkeys(f["device"] for f in result.fits))
    rows = []
    for s in result.summary():
        fits = {f["device"]: f for f in result.fits if f["model"] == s["model"] and f["method"] == s["method"]}
        done = sum(u.after is not None for u in result.users if u.model == s["model"] and u.method == s["method"])
        peak = s["peak_bytes"]
        rows.append([s["model"], s["method"], _pct(s["before"]), _pct(s["after"]), f"{s['improved']}/{done}",
                     "n/a" if peak is None else format_bytes(peak)]
                    + ["fits" if fits[d]["fits"] else ("n/a" if fits[d]["needed_bytes"] is None else "does not fit")
                       for d in devices if d in fits])
    return rows


def summary_header(result: HarResult) -> list[str]:
    devices = list(dict.fromkeys(f["device"] for f in result.fits))
    return ["model", "method", "before", "after", "users improved", "measured step peak"] + devices


def user_rows(result: HarResult, model: str) -> tuple[list[str], list[list[str]]]:
    """Per user (rows) x method (columns): accuracy after, with the base model's before."""
    methods = result.config["methods"]
    header = ["user", "before"] + list(methods)
    rows = []
    for user in result.config["users"]:
        cells = {u.method: u for u in result.users if u.model == model and u.user == user}
        if not cells:
            continue
        before = next(iter(cells.values())).before
        rows.append([str(user), _pct(before)] + [_pct(cells[m].after) if cells[m].after is not None else "not run"
                                                 for m in methods])
    return header, rows


def not_run(result: HarResult) -> list[str]:
    """Why a (model, method) was not run, once each."""
    seen: dict[tuple[str, str], str] = {}
    for u in result.users:
        if u.note:
            seen.setdefault((u.model, u.method), u.note)
    return [f"{model} / {method}: {why}" for (model, method), why in seen.items()]


def federated_rows(fed: FederatedHarResult) -> list[list[str]]:
    return [[str(r["round"]), _pct(r["test_accuracy"]), format_bytes(r["bytes_up"])]
            for r in fed.rounds if "test_accuracy" in r]


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

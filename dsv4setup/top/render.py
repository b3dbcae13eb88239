"""The `top` screen of a `dsv4setup.top/1` document: fits 80 columns, reads the same without colour.

Colour only underlines what the words already say (health, acceptance); every value carries
its unit, and a missing one reads "n/a" followed by the reason, listed under the table.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

NA = "n/a"
BAR_WIDTH = 20


def _num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return NA if value is None else fmt.format(value) + unit


def _pct(value: float | None) -> str:
    return _num(None if value is None else value * 100, "{:.1f}", "%")


def _ms(value: float | None) -> str:
    return _num(None if value is None else value * 1000, "{:.0f}", " ms")


def _bar(rate: float) -> str:
    filled = round(max(0.0, min(rate, 1.0)) * BAR_WIDTH)
    return "#" * filled + "." * (BAR_WIDTH - filled)


def _health(doc: dict[str, Any]) -> Text:
    status = doc["health"]["status"]
    return Text(status, style="bold green" if status == "ok" else "bold red")


def _mtp_rows(mtp: dict[str, Any]) -> list[tuple[str, RenderableType]]:
    rate = mtp["acceptance_rate"]
    style = "" if rate is None else "green" if rate >= 0.6 else "yellow" if rate >= 0.3 else "red"
    rows: list[tuple[str, RenderableType]] = [
        ("MTP", f"drafts {_num(mtp['drafts'])}  draft tokens {_num(mtp['draft_tokens'])}  "
                f"accepted {_num(mtp['accepted'])}"),
        ("", Text.assemble("acceptance ", (_pct(rate), style),
                           f"  mean acceptance length {_num(mtp['mean_acceptance_length'], '{:.2f}')}")),
    ]
    for pos, pos_rate in enumerate(mtp["per_position_rates"], start=1):
        shown = pos_rate if mtp["drafts"] else None  # no drafts in the interval: nothing to rate
        rows.append(("" if pos > 1 else "per position", f"#{pos} {_bar(shown or 0.0)} {_pct(shown)}"))
    return rows


def top_renderable(doc: dict[str, Any]) -> RenderableType:
    """The whole screen for one document."""
    header = Text.assemble(("dsv4setup top", "bold"), f"  {doc['base_url']}  health: ", _health(doc),
                           f"  last {doc['interval_s']:.1f}s")
    table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
    table.add_column("what", style="bold", no_wrap=True, width=13)
    table.add_column("value", overflow="fold")
    req, tok, lat, errors = doc["requests"], doc["tokens_per_s"], doc["latency_s"], doc["errors"]
    table.add_row("requests", f"running {_num(req['running'])}  waiting {_num(req['waiting'])}")
    table.add_row("tokens/s", f"prompt {_num(tok['prompt'], '{:.1f}')}  generation {_num(tok['generation'], '{:.1f}')}")
    for label, value in _mtp_rows(doc["mtp"]):
        table.add_row(label, value)
    table.add_row("KV cache", f"{_pct(doc['kv_cache_usage'])} used  preemptions {_num(doc['preemptions'])}")
    table.add_row("TTFT", f"p50 {_ms(lat['ttft']['p50'])}  p90 {_ms(lat['ttft']['p90'])}")
    table.add_row("TPOT", f"p50 {_ms(lat['tpot']['p50'])}  p90 {_ms(lat['tpot']['p90'])}")
    table.add_row("errors", f"failed requests {_num(errors['requests_failed'])}  HTTP 5xx {_num(errors['http_5xx'])}")
    reasons = [Text(f"{NA} {field}: {why}", style="dim") for field, why in doc["unavailable"].items()]
    footer = Text("counts and rates are over the last interval; Ctrl-C quits", style="dim")
    return Group(header, table, *reasons, footer)

"""Tables that neither cut nor mislead: the layout rules of bnncost's terminal output (cli.py prints them).

- A name a user types (strategy, device, layer, variable) is never cut: its column does not wrap and,
  if the terminal is narrower than the name, folds instead of ending in an ellipsis.
- A comparison wider than the terminal is first given short column headers (1, 2, ...) with a legend
  that spells every name out; if it is still too wide, its columns are stacked into several tables,
  each repeating the row labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

# a rich table with the default box spends 3 characters per column (two spaces of padding and a rule),
# plus one for the closing rule
COLUMN_COST = 3


def plain_width(cell: object) -> int:
    """Width of the longest line of a cell as printed (markup removed)."""
    text = cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain
    return max((len(line) for line in text.split("\n")), default=0)


def header_line(parts: list[str], width: int) -> str:
    """Parts joined by ' · ', broken only between parts, so a line never splits a name or 'batch 100'."""
    lines: list[list[str]] = [[]]
    used = 0
    for part in parts:
        w = plain_width(part)
        if lines[-1] and used + 3 + w > width:
            lines.append([])
            used = 0
        used += (3 if lines[-1] else 0) + w
        lines[-1].append(part)
    return "\n".join(" · ".join(line) for line in lines)


def name_column(table: Table, header: str, names: list[str], **kw) -> None:
    """A column of names a user types: never wrapped, never cut (folded only if the terminal is narrower)."""
    table.add_column(header, no_wrap=True, overflow="fold",
                     min_width=max([len(header), *(len(n) for n in names)]), **kw)


@dataclass
class Wide:
    """Rows of labelled cells, one column per compared item (strategy), laid out to fit a width."""

    title: str
    headers: list[str]
    rows: list[tuple[str, list[str]] | None] = field(default_factory=list)  # None: a section break
    abbreviate: bool = True  # headers are names (strategies): number them with a legend when short of room
    label_header: str = ""

    def row(self, label: str, cells: list[str]) -> None:
        self.rows.append((label, cells))

    def section(self) -> None:
        self.rows.append(None)

    def _width(self, headers: list[str], columns: list[int]) -> int:
        label = max([plain_width(self.label_header), *(plain_width(r[0]) for r in self.rows if r)])
        cols = [max([plain_width(headers[i]), *(plain_width(r[1][i]) for r in self.rows if r)]) for i in columns]
        return 1 + label + COLUMN_COST + sum(w + COLUMN_COST for w in cols)

    def fits(self, width: int) -> bool:
        """Whether the whole table, headers in full, fits `width` columns."""
        return self._width(self.headers, list(range(len(self.headers)))) <= width

    def _table(self, title: str, headers: list[str], columns: list[int]) -> Table:
        t = Table(title=title)
        t.add_column(self.label_header, no_wrap=True, overflow="fold")
        for i in columns:
            t.add_column(headers[i], justify="right", no_wrap=True, overflow="fold")
        for r in self.rows:
            if r is None:
                t.add_section()
            else:
                t.add_row(r[0], *[r[1][i] for i in columns])
        return t

    def render(self, width: int | None) -> list[Table | str]:
        """One table if it fits `width` (None: any width); else short headers with a legend; else stacked."""
        every = list(range(len(self.headers)))
        if width is None or self.fits(width):
            return [self._table(self.title, self.headers, every)]
        if not self.abbreviate:
            return self._stacked(width, self.headers, "")
        short = [str(i + 1) for i in every]
        legend = "columns:\n" + "\n".join(f"  {s} = {h}" for s, h in zip(short, self.headers))
        if self._width(short, every) <= width:
            return [self._table(self.title, short, every), legend]
        return self._stacked(width, short, legend)

    def _stacked(self, width: int, headers: list[str], legend: str) -> list[Table | str]:
        groups: list[list[int]] = [[]]
        for i in range(len(headers)):
            if groups[-1] and self._width(headers, groups[-1] + [i]) > width:
                groups.append([])
            groups[-1].append(i)
        per = -(-len(headers) // len(groups))  # as many tables, balanced: no narrow last table that wraps its title
        balanced = [list(range(k, min(k + per, len(headers)))) for k in range(0, len(headers), per)]
        if len(balanced) == len(groups) and all(self._width(headers, g) <= width for g in balanced):
            groups = balanced
        tables: list[Table | str] = [self._table(f"{self.title} ({k + 1} of {len(groups)})", headers, g)
                                     for k, g in enumerate(groups)]
        return tables + [legend] if legend else tables

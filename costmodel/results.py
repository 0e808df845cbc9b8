"""How a result presents itself to a program or a notebook: a dict, flat records, an HTML table.

Every result of the Python API (Prediction, Comparison, FitTable, Sweep, Summary) mixes this in:
`to_dict()` is the same document `--json` prints, `records()` is a list of flat dicts (one per row of
the result's main table; `pandas.DataFrame(result.records())` needs nothing more), and Jupyter shows
`_repr_html_()`, a title and those records as a table.
"""

from __future__ import annotations

from html import escape


class Presentable:
    """Mixin for result models: subclasses define `to_json()`, `records()` and `title()`."""

    def to_dict(self) -> dict:
        """The JSON document of this result (the same as the command's --json)."""
        return self.to_json()

    def records(self) -> list[dict]:
        raise NotImplementedError

    def title(self) -> str:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        rows = self.records()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
        return (f"<table><caption>{escape(self.title())}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return escape("x".join(map(str, value)))
    return escape(str(value))

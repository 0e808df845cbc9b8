"""Writing an imported model as the YAML a user would have typed, in one atomic step."""

from __future__ import annotations

import json

import yaml

from bnncost.layers.outfile import atomic_output


def model_yaml(doc: dict, comments: list[str]) -> str:
    """The model document as YAML: comment header, then one flow mapping per layer."""
    lines = [f"# {c}" for c in comments]
    lines += [f"name: {json.dumps(doc['name'])}", f"description: {json.dumps(doc['description'])}",
              f"input: {_flow(list(doc['input']))}", "layers:"]
    lines += _layer_lines(doc["layers"], "  ")
    return "\n".join(lines) + "\n"


def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16, sort_keys=False).strip()


def _layer_lines(items: list[dict], indent: str) -> list[str]:
    lines = []
    for item in items:
        (kind, fields), = item.items()
        if kind != "residual":
            lines.append(f"{indent}- {kind}: {_flow(fields)}")
            continue
        lines.append(f"{indent}- residual:")
        for part in ("body", "shortcut"):
            if fields.get(part):
                lines.append(f"{indent}    {part}:")
                lines += _layer_lines(fields[part], indent + "      ")
    return lines


def write_atomically(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same folder: never a partial file."""
    with atomic_output(path, "--output") as f:
        f.write(text)

"""Reading the YAML files users write (models here, strategies in costmodel): one parser, one error style."""

from __future__ import annotations

from typing import Any

import yaml

# libyaml's C parser when present: the zoo's ResNets parse ten times faster with it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """Parse YAML text; a syntax error becomes `error` with one line naming the file and line."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{source}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None

"""Reading every YAML file bnncost takes (models, strategies, engines, devices): one safe reader, one error style.

A user's file is untrusted, so the reader bounds what a file can make it do, and says so in one line:
- at most MAX_FILE_BYTES of UTF-8 text, checked before reading;
- no aliases (`*name`): a few aliases can expand to billions of nodes ("billion laughs") once the
  document is walked, and no bnncost file needs them;
- at most MAX_DEPTH levels of nesting and MAX_NODES nodes, checked on the parsed node tree before any
  Python object is built;
- no key written twice in one mapping (YAML would silently keep the last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_NODES = 1_000_000

# libyaml's C parser when present: the zoo's ResNets parse ten times faster with it.
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Refused(yaml.YAMLError):
    """A document the reader will not build, with the line it stops at."""

    def __init__(self, problem: str, mark=None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(_BASE):  # type: ignore[misc, valid-type]
    """A safe loader that checks the node tree's shape before constructing, and refuses duplicate keys."""

    def construct_document(self, node):
        _check_tree(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise _Refused(f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_tree(root: yaml.Node) -> None:
    """Refuse aliases (a node reached twice), depth beyond MAX_DEPTH and more than MAX_NODES nodes."""
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise _Refused("YAML aliases (*name) are not accepted", node.start_mark)
        seen.add(id(node))
        if len(seen) > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} YAML nodes", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """(line number or None, problem) of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = "; ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    return line, problem


def load_yaml(text: str) -> Any:
    """Parse YAML text within the bounds above; yaml.YAMLError (or RecursionError) on refusal."""
    if len(text) > MAX_FILE_BYTES:
        raise _Refused(f"larger than {MAX_FILE_BYTES >> 20} MiB")
    if "*" in text:  # name the alias's own line (the composed tree only knows its anchor's); events never expand
        for event in yaml.parse(text, Loader=_BASE):
            if isinstance(event, yaml.AliasEvent):
                raise _Refused("YAML aliases (*name) are not accepted", event.start_mark)
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def parse_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """Parse YAML text; a syntax error or a refusal becomes `error` with one line naming the file and line."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        where = f" (line {line})" if line is not None else ""
        raise error(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise error(f"{source}: malformed YAML: nested deeper than {MAX_DEPTH} levels") from None


def read_text(path: str | Path, error: type[Exception], what: str = "file") -> str:
    """A user's file as text: it must exist, be a regular file of at most MAX_FILE_BYTES, and be UTF-8."""
    p = Path(path)
    try:
        if not p.exists():
            raise error(f"{path}: {what} not found")
        if not p.is_file():
            raise error(f"{path}: not a regular file ({what} expected)")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(f"{path}: {size / (1 << 20):,.1f} MiB is larger than the {MAX_FILE_BYTES >> 20} MiB "
                        f"a {what} may be")
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(f"{path}: not UTF-8 text (byte {exc.start}){hint}") from None


def read_yaml(path: str | Path, error: type[Exception], what: str = "file") -> Any:
    """Read and parse a user's YAML file within the bounds above; every problem is `error`, one line."""
    return parse_yaml(read_text(path, error, what), str(path), error)

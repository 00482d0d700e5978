"""Reading a suite's YAML and checking its fields: one-line errors naming the file and the key path.

sabench.suite builds the typed Suite from these checked values.
"""
from __future__ import annotations

from typing import Any, Optional

import yaml

from sabench.errors import UserError
from sabench.values import is_int, located, show

# Upper bounds: a value past these is a typo (or 1e20), and would hang a run rather than fail it.
MAX_REPEATS, MAX_WARMUP, MAX_DECODE_TOKENS, MAX_SIZE = 10_000, 1_000, 1 << 20, 1 << 24
REQUIRED = ("name", "model", "variants", "sweep")
MAX_BATCH = "max"  # a batch_size entry: the largest batch that fits (harness.max_batch resolves it)


class SuiteError(UserError):
    """A suite that cannot run as written. str(e) is one line: ``FILE: key.path: problem``.

    `source` is the file (or suite label), `key` the dotted key path (None when the
    problem is the file as a whole), `problem` the explanation.
    """

    def __init__(self, source: str, key: Optional[str], problem: str):
        self.source, self.key, self.problem = str(source), key, problem
        super().__init__(located(self.source, key, problem))


def read_yaml(text: str, source: str) -> Any:
    """YAML text -> plain data, refusing anything safe loading would not build as data."""
    try:
        # Composing builds only the node tree (no object is constructed), so the tree
        # can be vetted, with key paths for the messages, before safe_load runs.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise SuiteError(source, None, f"empty suite file; expected a mapping with keys {', '.join(REQUIRED)}")
        _vet_nodes(root, "", source)
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = ": ".join(p for p in (e.context, e.problem) if p)
        raise SuiteError(source, where, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise SuiteError(source, None, f"invalid YAML: {e}") from None
    except RecursionError:
        raise SuiteError(source, None, "nested too deeply (or an alias refers to itself); "
                                       "a suite is a flat mapping of plain values") from None


def _vet_nodes(node, path: str, source: str, seen=None) -> None:
    """Reject tags safe loading cannot construct, and keys written twice in one mapping.

    YAML silently keeps the last of two equal keys; in a suite that hides an edit.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # aliases can make the tree a graph
        return
    seen.add(id(node))
    line = node.start_mark.line + 1
    if node.tag not in yaml.SafeLoader.yaml_constructors:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SuiteError(
            source, path or None,
            f"tag {tag!r} (line {line}) is not allowed; a suite is plain data: "
            "strings, numbers, booleans, null, lists and mappings",
        )
    if isinstance(node, yaml.MappingNode):
        keys: dict = {}
        for key_node, value_node in node.value:
            child = _join(path, key_node.value if isinstance(key_node, yaml.ScalarNode) else "<key>")
            _vet_nodes(key_node, child, source, seen)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in keys:
                    raise SuiteError(
                        source, child,
                        f"duplicate key (lines {keys[key_node.value]} and {key_node.start_mark.line + 1}); "
                        "each key may appear once",
                    )
                keys[key_node.value] = key_node.start_mark.line + 1
            _vet_nodes(value_node, child, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _vet_nodes(item, f"{path}[{i}]", source, seen)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def check_keys(mapping: dict, allowed, required, path: str, source: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SuiteError(source, _join(path, key), f"unknown key; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in mapping:
            raise SuiteError(source, _join(path, key), "required key missing")


def int_field(value, key: str, minimum: int, source: str, maximum: int = MAX_SIZE) -> int:
    if not is_int(value) or not minimum <= value <= maximum:
        raise SuiteError(source, key, f"expected an integer in {minimum}..{maximum}, got {show(value)}")
    return value


def parsed(parse, value, key: str, source: str):
    """parse(value), a ValueError from it becoming the SuiteError that names `key`; None stays None."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as e:
        raise SuiteError(source, key, str(e)) from None


def string_field(value, key: str, what: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(source, key, f"expected {what}, got {show(value)}")
    return value.strip()


def int_list(value, key: str, source: str) -> tuple[tuple[int, ...], list[str]]:
    """A positive int or a non-empty list of distinct ones -> (sorted values, key path of each)."""
    if is_int(value):
        items, paths = [value], [key]
    elif isinstance(value, list):
        items, paths = value, [f"{key}[{i}]" for i in range(len(value))]
    else:
        raise SuiteError(source, key, f"expected a positive integer or a list of them, got {show(value)}")
    if not items:
        raise SuiteError(source, key, "expected a non-empty list of positive integers, got []")
    first = {}
    for item, p in zip(items, paths):
        int_field(item, p, 1, source)
        if item in first:
            raise SuiteError(source, p, f"{item} is listed twice (also at {first[item]}); list each value once")
        first[item] = p
    order = sorted(range(len(items)), key=items.__getitem__)
    return tuple(items[i] for i in order), [paths[i] for i in order]


def batch_list(value, source: str) -> tuple:
    """sweep.batch_size: positive ints and at most one `max` -> ints ascending, then "max"."""
    key = "sweep.batch_size"
    if value == MAX_BATCH:
        return (MAX_BATCH,)
    if not isinstance(value, list) or not value:
        return int_list(value, key, source)[0]
    first: dict = {}
    for i, item in enumerate(value):
        p = f"{key}[{i}]"
        if item != MAX_BATCH and (not is_int(item) or not 1 <= item <= MAX_SIZE):
            raise SuiteError(source, p, f"expected an integer in 1..{MAX_SIZE} or {MAX_BATCH!r}, "
                                        f"got {show(item)}")
        if item in first:
            raise SuiteError(source, p, f"{item} is listed twice (also at {first[item]}); list each value once")
        first[item] = p
    return tuple(sorted(x for x in value if x != MAX_BATCH)) + ((MAX_BATCH,) if MAX_BATCH in value else ())

"""Reading YAML for configuration and scenario files: duplicate keys refused, hints on errors.

PyYAML's ``safe_load`` lets a repeated key win silently (``max_in_flight: 4`` then ``40``
loads 40; a second upstream of the same name replaces the first). Here the document is
composed first, every mapping is checked for repeated keys (reported with their key path and
lines), and only then constructed. A syntax error on a line holding ``${`` says how to quote:
``${VAR}`` inside a ``{...}`` flow mapping is not valid YAML.
"""

from __future__ import annotations

from typing import Any

import yaml

_MERGE_KEY = "<<"


class YamlProblems(ValueError):
    """A document that cannot be used; ``problems`` holds one line each (with a key path)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _duplicates(node: yaml.Node, path: str, problems: list[str]) -> None:
    """Walk the composed node tree; a key seen twice in one mapping is a problem."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = _child_path(path, key)
            if key != _MERGE_KEY and isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                if key in first_line:
                    problems.append(f"{where}: duplicate key (line {line}; "
                                    f"first given on line {first_line[key]})")
                else:
                    first_line[key] = line
            _duplicates(value_node, where, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, f"{path}[{i}]", problems)


def _syntax_problem(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    message = f"not valid YAML{where}: {problem}"
    if mark is not None:
        lines = text.splitlines()
        near = lines[max(0, mark.line - 1): mark.line + 1]
        if any("${" in line for line in near):
            message += ('; a ${VAR} value inside {...} or [...] must be quoted: '
                        'key: "${VAR}" (or use block style, one key per line)')
    return message


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely; raises ``YamlProblems`` (syntax or duplicate keys)."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise YamlProblems([_syntax_problem(exc, text)]) from exc
        if node is None:
            return None
        problems: list[str] = []
        _duplicates(node, "", problems)
        if problems:
            raise YamlProblems(problems)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise YamlProblems([_syntax_problem(exc, text)]) from exc
    finally:
        loader.dispose()

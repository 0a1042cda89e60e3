"""Reading one mapping of a YAML document: typed getters that record problems, not raise.

A ``Section`` knows its key path (``models.qwen``), so every problem names the bad key;
string values have ``${VAR}`` / ``${VAR:-default}`` replaced from the environment given; a key
never read is reported by ``finish`` as unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(text: str, environ: Mapping[str, str], problems: list[str], path: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_PATTERN.sub(replace, text)


class Section:
    """Reads one mapping of the file, recording problems instead of raising at the first."""

    def __init__(self, data: Any, path: str, problems: list[str], environ: Mapping[str, str]):
        self.path = path
        self.problems = problems
        self.environ = environ
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.append(f"{path or '(top level)'}: expected a mapping, got {_kind(data)}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if isinstance(value, str):
            value = interpolate_env(value, self.environ, self.problems, self.key_path(key))
        return value

    def has(self, key: str) -> bool:
        return key in self.data

    def section(self, key: str) -> Section:
        self.seen.add(key)
        return Section(self.data.get(key), self.key_path(key), self.problems, self.environ)

    def str(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problems.append(f"{self.key_path(key)}: expected a string, got {_kind(value)}")
            return default
        if choices and value not in choices:
            self.problems.append(
                f"{self.key_path(key)}: must be one of {', '.join(choices)}, got {value!r}"
            )
            return default
        return value

    def number(
        self, key: str, default: Any = None, *, integer: bool = False, minimum: float = 0,
        exclusive: bool = True,
    ) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = _parse_number(value)
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            what = "an integer" if integer else "a number"
            self.problems.append(f"{self.key_path(key)}: expected {what}, got {_kind(value)}")
            return default
        if value < minimum or (exclusive and value == minimum):
            sign = ">" if exclusive else ">="
            self.problems.append(f"{self.key_path(key)}: must be {sign} {minimum}, got {value}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self.key_path(key)}: expected true or false, got "
                                 f"{_kind(value)}")
            return default
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problems.append(f"{self.key_path(key)}: expected a list, got {_kind(value)}")
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problems.append(f"{self.key_path(key)}[{i}]: expected a string")
                continue
            where = f"{self.key_path(key)}[{i}]"
            out.append(interpolate_env(item, self.environ, self.problems, where))
        return tuple(out)

    def finish(self) -> None:
        """Unknown keys are errors: a typo must not silently drop a limit."""
        for key in self.data:
            if key not in self.seen:
                self.problems.append(f"{self.key_path(str(key))}: unknown key")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _parse_number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text

"""Declared connector options and their validation.

Each connector lists its options as :class:`OptionSpec`; ``validate_options`` rejects unknown
keys (so a typo is an error at CREATE, not a silently ignored setting) and fills defaults.
A name may contain ``*`` to stand for one dotted segment (``fields.*.kind``).

>>> spec = [OptionSpec("path", required=True), OptionSpec("pattern", default="*")]
>>> validate_options(spec, {"path": "data", "connector": "file"}, what="source s")
{'path': 'data', 'pattern': '*'}
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from sqlstream.errors import InvalidParameterValue

# Options every connector takes; handled by the engine, not the connector.
COMMON = {"connector", "on_error", "force_append_only"}


@dataclass(frozen=True)
class OptionSpec:
    name: str
    default: str | None = None
    required: bool = False
    description: str = ""
    #: never echoed by SHOW or logs
    secret: bool = False
    #: allowed values, when the option is an enumeration
    choices: tuple[str, ...] = ()

    def matches(self, key: str) -> bool:
        if "*" not in self.name:
            return key == self.name
        return len(key.split(".")) == len(self.name.split(".")) and fnmatch.fnmatchcase(
            key, self.name
        )


def validate_options(
    spec: list[OptionSpec], options: dict[str, str], *, what: str
) -> dict[str, str]:
    """The options a connector sees: known keys only, defaults filled in."""
    out: dict[str, str] = {}
    for key, value in options.items():
        if key in COMMON:
            continue
        match = next((s for s in spec if s.matches(key)), None)
        if match is None:
            known = ", ".join(s.name for s in spec) or "none"
            raise InvalidParameterValue(f"{what}: unknown option '{key}' (known: {known})")
        if match.choices and value.lower() not in match.choices:
            raise InvalidParameterValue(
                f"{what}: option '{key}' must be one of {', '.join(match.choices)}, not '{value}'"
            )
        out[key] = value
    for s in spec:
        if "*" in s.name:
            continue
        if s.name not in out:
            if s.required:
                raise InvalidParameterValue(f"{what}: option '{s.name}' is required")
            if s.default is not None:
                out[s.name] = s.default
    return out

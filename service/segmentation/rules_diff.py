"""What changes between two rule sets, rule by rule, in words an operator reads (pure).

Tables are compared by name, not by position: the segment table and the RFM segment table by
each entry's ``name``, treatments by id. A rule added, removed or edited is one change each; a
rule that only moved (the first match wins, so order matters) is a ``moved`` change. Every other
setting is compared value by value; lists of values (cut points, windows) count as one value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from service.segmentation.rules import Rules

ChangeKind = Literal["added", "removed", "changed", "moved"]

_NAMED_TABLES = ("segments", "rfm.segments")
"""Lists whose entries are identified by their ``name``."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One difference; ``path`` names the rule, e.g. ``segments.loyal.when.lifecycle``."""

    path: str
    kind: ChangeKind
    before: Any = None
    """The old value (None for ``added``; the old position for ``moved``)."""
    after: Any = None
    """The new value (None for ``removed``; the new position for ``moved``)."""

    def describe(self) -> str:
        if self.kind == "added":
            return f"added {self.path}: {_show(self.after)}"
        if self.kind == "removed":
            return f"removed {self.path} (was {_show(self.before)})"
        if self.kind == "moved":
            return f"moved {self.path}: position {self.before} -> {self.after}"
        return f"changed {self.path}: {_show(self.before)} -> {_show(self.after)}"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "before": self.before,
            "after": self.after,
            "description": self.describe(),
        }


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def diff_rules(old: Rules, new: Rules) -> list[RuleChange]:
    """Every difference from ``old`` to ``new`` (empty when they are the same version)."""
    if old.version == new.version:
        return []
    out: list[RuleChange] = []
    _diff_value("", old.document(), new.document(), out)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _diff_value(path: str, before: Any, after: Any, out: list[RuleChange]) -> None:
    if before == after:
        return
    if path in _NAMED_TABLES and isinstance(before, list) and isinstance(after, list):
        _diff_named(path, before, after, out)
    elif isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            sub = _join(path, str(key))
            if key not in after:
                out.append(RuleChange(sub, "removed", before=before[key]))
            elif key not in before:
                out.append(RuleChange(sub, "added", after=after[key]))
            else:
                _diff_value(sub, before[key], after[key], out)
    else:
        out.append(RuleChange(path, "changed", before=before, after=after))


def _diff_named(
    path: str, before: list[dict[str, Any]], after: list[dict[str, Any]], out: list[RuleChange]
) -> None:
    old = {e["name"]: (i, e) for i, e in enumerate(before)}
    new = {e["name"]: (i, e) for i, e in enumerate(after)}
    for name, (_, entry) in old.items():
        if name not in new:
            out.append(RuleChange(f"{path}.{name}", "removed", before=_body(entry)))
    for name, (i, entry) in new.items():
        if name not in old:
            out.append(RuleChange(f"{path}.{name}", "added", after={"position": i, **_body(entry)}))
    # Order among the rules both sides share: first match wins, so a move changes outcomes.
    kept_before = [e["name"] for e in before if e["name"] in new]
    kept_after = [e["name"] for e in after if e["name"] in old]
    # The rules outside a longest common subsequence are the ones that moved (moving one rule
    # up shifts every rule it passes, which did not move themselves).
    stayed = _longest_common_subsequence(kept_before, kept_after)
    for name in kept_after:
        if name not in stayed:
            out.append(
                RuleChange(f"{path}.{name}", "moved", before=old[name][0], after=new[name][0])
            )
    for name in kept_after:
        _diff_value(f"{path}.{name}", _body(old[name][1]), _body(new[name][1]), out)


def _body(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "name"}


def _longest_common_subsequence(a: list[str], b: list[str]) -> set[str]:
    """Names of one longest common subsequence of two orderings of the same names."""
    n, m = len(a), len(b)
    length = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            length[i][j] = (
                length[i + 1][j + 1] + 1
                if a[i] == b[j]
                else max(length[i + 1][j], length[i][j + 1])
            )
    out: set[str] = set()
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            out.add(a[i])
            i, j = i + 1, j + 1
        elif length[i + 1][j] >= length[i][j + 1]:
            i += 1
        else:
            j += 1
    return out

"""requirements.lock (the image's dependencies, `make lock`) is current with pyproject.toml:
every runtime dependency and the extras it asks for are pinned, in range, with hashes."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy import ROOT

LOCK = ROOT / "requirements.lock"
RUNTIME = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    """Canonical name → (pinned version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = (pin.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What the installed distribution asks for under the extras ``requirement`` names."""
    if not requirement.extras:
        return []
    found = []
    for text in metadata.requires(requirement.name) or []:
        needed = Requirement(text)
        if needed.marker is None:
            continue
        for extra in requirement.extras:
            environment = {"extra": extra, "python_version": "3.11", "sys_platform": "linux"}
            if needed.marker.evaluate(environment):
                found.append(needed)
                break
    return found


def lock_problems(lock_text: str, dependencies: list[str]) -> list[str]:
    pins = parse_lock(lock_text)
    problems = [f"{name}=={version} has no hash" for name, (version, n) in pins.items() if not n]
    for line in dependencies:
        requirement = Requirement(line)
        for needed in [requirement, *_extra_requirements(requirement)]:
            name = canonicalize_name(needed.name)
            if name not in pins:
                problems.append(f"{needed} is not in requirements.lock: run make lock")
            elif not needed.specifier.contains(pins[name][0], prereleases=True):
                problems.append(f"{name}=={pins[name][0]} does not satisfy {needed}: make lock")
    return problems


def test_lock_is_current_with_pyproject() -> None:
    assert lock_problems(LOCK.read_text(), RUNTIME) == []


def test_lock_holds_runtime_dependencies_only() -> None:
    pins = parse_lock(LOCK.read_text())
    test_extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    for line in test_extras:
        name = canonicalize_name(Requirement(line).name)
        assert name not in pins, f"{name}: a test tool in the image"


def test_the_checker_catches_a_missing_a_stale_and_an_unhashed_pin() -> None:
    text = LOCK.read_text()
    dependencies = [*RUNTIME, "some-new-library>=1.0", "orjson>=99"]
    unhashed = text + "\nleftover==1.0\n"
    problems = "\n".join(lock_problems(unhashed, dependencies))
    assert "some-new-library>=1.0 is not in requirements.lock" in problems
    assert "does not satisfy orjson>=99" in problems
    assert "leftover==1.0 has no hash" in problems


def test_lock_was_made_by_make_lock() -> None:
    head = LOCK.read_text().splitlines()[:3]
    assert any(line.strip() == "#    make lock" for line in head), head
    makefile = (ROOT / "Makefile").read_text()
    assert "--generate-hashes" in makefile and "--output-file requirements.lock" in makefile

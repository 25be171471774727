"""Print `name==version` for the lowest release of each dependency pyproject.toml allows.

Used by .ci/run as a pip constraints file, so a second environment runs the tests with exactly the
declared minimums and the `>=` lines cannot drift from the truth. torch is left out: CI pins it.
Every requirement must be `name>=version` (optionally with extras); anything else stops CI, since
its lowest allowed release would be unclear.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SKIP = {"torch"}
REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*(?P<version>[0-9][0-9A-Za-z.]*)\s*$")


def lowest_pins(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: {requirement!r} is not of the form name>=version")
        name = match["name"].lower().replace("_", "-")
        if name not in SKIP:
            pins[name] = match["version"]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    print("\n".join(lowest_pins(Path(sys.argv[1]), sys.argv[2:])))

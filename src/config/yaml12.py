"""Reading params.yaml the way DVC does: YAML 1.2 booleans (only true/false, never yes/no/on/off/y/n).

DVC reads and rewrites params.yaml (``dvc exp run -S``) as YAML 1.2, which drops the
quotes from values like "yes"; YAML 1.1 would then turn the category code ``yes`` into
``True``. Loading with 1.2 rules keeps both readers in agreement.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it (its wheels are): ~10x faster on params.yaml, which every
# stage and CLI reads at start-up; the resolvers below are Python either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Yaml12Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader with YAML 1.2 booleans."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_params(path: str | Path) -> dict[str, Any]:
    """Parse a params file the way DVC does (YAML 1.2 booleans)."""
    with Path(path).open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Yaml12Loader)

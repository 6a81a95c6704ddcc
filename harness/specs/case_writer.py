"""Write a case back as a TOML case file (for generated cases: a falsifying example becomes a regression case)."""
from __future__ import annotations

import tomli_w

from harness.specs.case import validate_case_data

# The order a person reads a case in.
_ORDER = ("id", "description", "family", "tags", "references", "dtypes", "devices", "timeout_s", "model",
          "adapter", "steps", "save", "load", "requires", "tolerance")


def case_to_toml(data: dict) -> str:
    """TOML text of a case dict (the parsed form of a case file); validated first, so it loads back."""
    validate_case_data(data, data.get("id", "<generated>"))
    ordered = {key: data[key] for key in _ORDER if key in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return tomli_w.dumps(ordered)

"""Reading a TOML table of harness/specs (the known issues, the uncovered methods): the shipped file or a user's,
with one error, naming the file, for whatever is wrong with it."""
from __future__ import annotations

from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # python < 3.11
    import tomli as tomllib


def read_table(shipped: str, path, error_cls, what: str) -> tuple[dict, str]:
    """(data, source) of harness/specs/<shipped>, or of the file at `path`; error_cls(message) when it cannot be
    read, is not UTF-8 or is not TOML. `what` names the table in the messages ("known-issues table")."""
    if path is None:
        text, source = resources.files("harness.specs").joinpath(shipped).read_text(), f"harness/specs/{shipped}"
    else:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise error_cls(f"{source}: cannot read the {what}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise error_cls(f"{source}: not valid UTF-8 (byte {exc.start}): the {what} is UTF-8 TOML") from None
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as exc:
        raise error_cls(f"{source}: not valid TOML: {exc}") from None

"""The page's assets (assets/: Jinja2 templates, CSS, JS) and the one Jinja2 environment that renders them
(autoescape on, undefined values are errors). Only http(s) references may become links (`web_url` test)."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

ASSETS = "assets"
WEB_URL = re.compile(r"https?://[^\s<>\"'`\\]+", re.IGNORECASE)


def is_web_url(value) -> bool:
    """Whether a reference may become a link: an http(s) URL, nothing else (no javascript:, data:, file:)."""
    return isinstance(value, str) and WEB_URL.fullmatch(value) is not None and bool(urlsplit(value).netloc)


def asset(name: str) -> str:
    return resources.files("harness.reporting").joinpath(f"{ASSETS}/{name}").read_text(encoding="utf-8")


def inline(name: str, tag: str):
    """An asset's text for a <style> or <script> element, which ends at the first closing tag in it."""
    from markupsafe import Markup

    text = asset(name)
    if f"</{tag}" in text.lower():
        raise ValueError(f"{ASSETS}/{name} contains '</{tag}': it would end the inline <{tag}> element")
    return Markup(text)


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: asset(name)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.tests["web_url"] = is_web_url
    return env

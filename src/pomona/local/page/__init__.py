"""The classify page: one self-contained HTML file (inline CSS and JS), package data read once.

`pomona local up` serves it at its classify port's `/` to browsers (`FunctionUrlServer(page=...)`); the page
POSTs photos to the same server as the app does, so the answer it shows is the classify handler's own.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def classify_page() -> bytes:
    """The page's HTML, UTF-8."""
    return files(__package__).joinpath("classify.html").read_bytes()

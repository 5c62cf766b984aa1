"""The oldest torch ukd is checked against, enforced when ukd is imported (pyproject.toml names the same floor)."""

from __future__ import annotations

import re

#: The oldest (major, minor) of torch that the test suite has passed on (torch 2.10 pins Triton 3.6.0).
MIN_TORCH = (2, 10)


def parse_version(text: str) -> tuple[int, int]:
    """``"2.13.0+cpu"`` → ``(2, 13)``.

    Raises:
        ValueError: ``text`` does not start with ``MAJOR.MINOR``.
    """
    m = re.match(r"(\d+)\.(\d+)", text)
    if m is None:
        raise ValueError(f"torch version: expected MAJOR.MINOR..., got {text!r}")
    return int(m[1]), int(m[2])


def check_torch(version: str) -> None:
    """Raise ``ImportError`` if torch ``version`` is older than :data:`MIN_TORCH`, saying what to install."""
    if parse_version(version) < MIN_TORCH:
        floor = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"ukd needs torch >= {floor} (the oldest it is tested against), but torch {version} is installed; "
            f"upgrade with `pip install 'torch>={floor}'`"
        )

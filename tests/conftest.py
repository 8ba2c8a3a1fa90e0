"""Shared fixtures. Tests that need the real files in ../shared use the ``shared`` fixture: without
the folder they skip, unless AGEGENDER_REQUIRE_SHARED=1 (set in CI), where a missing folder fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    return Path(os.environ.get("AGEGENDER_SHARED", REPO.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """The path ``../shared/<parts>``; skips (or fails in CI) when it is absent."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        message = f"needs {path} (the project's shared test files)"
        if os.environ.get("AGEGENDER_REQUIRE_SHARED") == "1":
            pytest.fail(message + " and AGEGENDER_REQUIRE_SHARED=1", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def shared() -> Path:
    """The root of ../shared (see :func:`require_shared`)."""
    return require_shared()


@pytest.fixture(scope="session")
def shared_session() -> Path:
    return require_shared()

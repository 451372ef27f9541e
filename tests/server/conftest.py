"""Fixtures of the server tests beside the suite's (tests/conftest.py)."""

from __future__ import annotations

import pytest
from job_watch import HeldJobs


@pytest.fixture
def jobs():
    """Scheduler jobs held until let go (all are, as the test ends)."""
    made = HeldJobs()
    yield made
    made.let_go()

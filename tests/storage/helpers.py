"""Helpers shared by the storage tests."""

from __future__ import annotations

import pandas as pd

from storage.base import Store


def assert_same_frames(a: Store, b: Store, start: float, end: float) -> None:
    """Both stores answer every query of ``[start, end]`` with equal frames."""
    pd.testing.assert_frame_equal(a.query_samples(start, end), b.query_samples(start, end))
    pd.testing.assert_frame_equal(a.query_alerts(start, end), b.query_alerts(start, end))
    pd.testing.assert_frame_equal(a.query_statuses(start, end), b.query_statuses(start, end))

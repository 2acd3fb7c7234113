from datetime import UTC, datetime

import pytest

from cases.evaluation import months_to_store


@pytest.mark.parametrize(
    ("now", "months"),
    [
        (datetime(2026, 12, 1, 3, 0, tzinfo=UTC), ("2026-11", "2026-12")),
        # 01:00 on 1 December in the city (UTC+8)
        (datetime(2026, 11, 30, 17, 0, tzinfo=UTC), ("2026-11", "2026-12")),
        (datetime(2026, 11, 30, 15, 0, tzinfo=UTC), ("2026-10", "2026-11")),
        (datetime(2027, 1, 15, 0, 0, tzinfo=UTC), ("2026-12", "2027-01")),
    ],
)
def test_a_refresh_keeps_the_city_s_last_and_current_month(now, months) -> None:
    assert months_to_store(now) == months

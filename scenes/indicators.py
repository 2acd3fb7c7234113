"""SQL of the city's indicators that the metrics and the dashboards both show.

Each is a fragment that a query completes with its own window (the last night, a chosen night,
every night of a range) and grouping; keeping it here makes a panel and a metric agree.
"""

from __future__ import annotations

from typing import Final

#: A case still to be worked (``cases``).
OPEN_CASE: Final = "state not in ('closed', 'cancelled')"
#: A device (alias ``dd``) with an active sensor_offline detection.
OFFLINE: Final = (
    "exists (select from detections x where x.device_id = dd.device_id "
    "and x.kind = 'sensor_offline' and x.cleared_at is null)"
)
#: Lighting rate of ``lighting_nights`` rows: lamp-time lit of the time the plan wanted it lit.
LIGHTING_RATE: Final = "sum(lit_s) / nullif(sum(expected_s), 0)"
#: Road coverage: of ``road_nights n join road_segments s using (segment_id)`` rows of planned
#: segments (``n.required > 0``), the share of planned length swept.
ROAD_COVERAGE: Final = "sum(n.coverage * s.length_m) / nullif(sum(s.length_m), 0)"
ROAD_NIGHTS: Final = "road_nights n join road_segments s using (segment_id)"

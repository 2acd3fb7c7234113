-- Street lighting (docs/lighting.md): finding a cabinet's lamps, and the nightly indicators.

-- A lamp names its cabinet (the cabinet controller's device id) in its component's properties;
-- the lighting scene judges a cabinet's lamps together.
create index assets_cabinet on assets ((properties ->> 'cabinet_id')) where properties ? 'cabinet_id';
create index devices_asset on devices (asset_code);

-- One row per lamp and lighting day (local noon of `night` to the next local noon): how long
-- its plan wanted it lit and how much of that it was, as far as its readings tell (a reading
-- tells the state until the next one, for hold_s at most), and what it drew.
create table lighting_nights (
    night         date not null,
    device_id     text not null,
    district      text not null,               -- '' outside any
    street        text,                        -- the street region of its component, if any
    expected_s    double precision not null,   -- plan says lit, readings known
    lit_s         double precision not null,   -- ... and it was lit
    unknown_s     double precision not null,   -- plan says lit, no recent reading
    energy_kwh    double precision not null,   -- drawn over the whole lighting day
    day_burn_s    double precision not null,   -- lit in daylight (beyond the switching grace)
    day_burn_kwh  double precision not null,
    computed_at   timestamptz not null default now(),
    primary key (night, device_id)
);
create index lighting_nights_district on lighting_nights (night, district);

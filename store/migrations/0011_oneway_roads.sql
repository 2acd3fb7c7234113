-- One-way road segments (a carriageway of a dual road, a roundabout): swept only as drawn, so
-- the clean-road scene matches only fixes travelling that way to them.
alter table road_segments add column oneway boolean not null default false;

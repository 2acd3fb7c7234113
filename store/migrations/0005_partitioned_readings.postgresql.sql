-- Plain PostgreSQL path only (the runner skips *.postgresql.sql on the TimescaleDB path, where
-- the readings tables are hypertables with a retention policy).
--
-- Each readings table becomes range-partitioned on ts: one partition a week (Monday 00:00 UTC to
-- the next), so that retention drops a week's partition instead of deleting rows, plus a default
-- partition that takes any reading no weekly partition covers (a backfill from before the first
-- one, or beyond those created ahead): no reading is refused. Existing rows move into weekly
-- partitions. The ingest service creates partitions ahead and drops expired ones
-- (store/partitions.py); cityops_create_partition is the one definition of a partition's
-- bounds and name for both.

-- The week a reading belongs to: 2000-01-03 was a Monday.
create function cityops_partition_start(ts timestamptz) returns timestamptz
    language sql immutable strict parallel safe
    return date_bin('7 days', ts, timestamptz '2000-01-03 00:00:00+00');

-- Create the weekly partition of ``parent`` that holds ``at`` (named parent_pYYYYMMDD after its
-- first day) unless it exists, moving its readings out of the default partition; return its name,
-- or null when it existed.
create function cityops_create_partition(parent regclass, at timestamptz) returns text
    language plpgsql strict as $$
declare
    starts constant timestamptz := cityops_partition_start(at);
    ends constant timestamptz := starts + interval '7 days';
    child constant text := format(
        '%s_p%s',
        (select relname from pg_class where oid = parent),
        to_char(starts at time zone 'UTC', 'YYYYMMDD')
    );
    fallback constant regclass := (
        select nullif(partdefid, 0) from pg_partitioned_table where partrelid = parent
    );
begin
    -- Self-conflicting, and not in the way of inserts (ROW EXCLUSIVE): two creators of the same
    -- partition (migrate, the maintenance of several ingest workers) take turns here.
    execute format('lock table %s in share update exclusive mode', parent);
    if to_regclass(child) is not null then
        return null;
    end if;
    execute format('create table %I (like %s including all excluding indexes)', child, parent);
    -- Lets ATTACH skip scanning the new table for rows outside the bounds.
    execute format(
        'alter table %I add constraint bounds check (ts >= %L and ts < %L)', child, starts, ends
    );
    if fallback is not null then
        -- ATTACH refuses a range the default partition holds rows of, so they move first.
        -- Locked before reading, so that no row of the range arrives after the move.
        execute format('lock table %s in access exclusive mode', fallback);
        execute format(
            'with moved as (delete from %s where ts >= %L and ts < %L returning *) '
            'insert into %I select * from moved',
            fallback, starts, ends, child
        );
    end if;
    execute format(
        'alter table %s attach partition %I for values from (%L) to (%L)',
        parent, child, starts, ends
    );
    execute format('alter table %I drop constraint bounds', child);
    return child;
end $$;

do $$
declare
    readings text;
    week timestamptz;
begin
    foreach readings in array array[
        'manhole_readings', 'sweeper_readings', 'light_readings', 'device_status'
    ] loop
        execute format('drop index %I', readings || '_key');
        execute format('alter table %I rename to %I', readings, readings || '_unpartitioned');
        execute format(
            'create table %I (like %I including all) partition by range (ts)',
            readings, readings || '_unpartitioned'
        );
        execute format('create table %I partition of %I default', readings || '_default', readings);
        for week in execute format(
            'select distinct cityops_partition_start(ts) from %I', readings || '_unpartitioned'
        ) loop
            perform cityops_create_partition(readings::regclass, week);
        end loop;
        execute format('insert into %I select * from %I', readings, readings || '_unpartitioned');
        execute format('drop table %I', readings || '_unpartitioned');
        -- Built after the rows are in, per partition: faster than maintaining it row by row. It
        -- holds the partition key, so it can be unique on a partitioned table.
        execute format('create unique index %I on %I (device_id, ts)', readings || '_key', readings);
    end loop;
end $$;

-- Device health from the change feed (clock and rate), acknowledged detections, and the outbox
-- of what the scenes service publishes on cityops/v1/out/... (docs/scenes.md).

-- Per device in device_ids (same order): its clock skew in seconds, the offset of its newest
-- reading from the readings that arrived around it (null with no other device's; ingest/writer.py
-- ClockSample), and the readings it sent, duplicates included. Batches written before this
-- migration have nulls: no clock or rate.
alter table reading_batches
    add column skews_s real[],
    add column counts integer[];

alter table detections
    add column acknowledged_by text,
    add column acknowledged_note text;

-- What changed and is not yet published: the subject's latest detection of a kind
-- (ref 'kind/subject'), a case's current state (ref case_id), a case transition (ref event_id).
-- Written by triggers, so every writer (scenes, the case API, the CLI, SQL by hand) is covered;
-- one row per ref however often it changes before the publisher reads it.
create table outbound (
    what      text not null check (what in ('detection', 'case', 'case_event')),
    ref       text not null,
    queued_at timestamptz not null default now(),
    primary key (what, ref)
);

create function outbound_queue() returns trigger language plpgsql as $$
begin
    if tg_table_name = 'detections' then
        insert into outbound (what, ref) values ('detection', new.kind || '/' || new.subject)
            on conflict do nothing;
    elsif tg_table_name = 'cases' then
        insert into outbound (what, ref) values ('case', new.case_id::text) on conflict do nothing;
    else
        insert into outbound (what, ref) values ('case_event', new.event_id::text)
            on conflict do nothing;
    end if;
    perform pg_notify('cityops_outbound', '');
    return null;
end $$;

create trigger detections_outbound after insert or update on detections
    for each row execute function outbound_queue();
create trigger cases_outbound after insert or update on cases
    for each row execute function outbound_queue();
create trigger case_events_outbound after insert on case_events
    for each row execute function outbound_queue();

-- Device health from the change feed (clock and rate), acknowledged detections, and the outbox
-- of what the scenes service publishes on cityops/v1/out/... (docs/scenes.md).

-- Per device in device_ids (same order): its clock skew in seconds, the offset of its newest
-- reading from the readings that arrived around it (null with no other device's; ingest/writer.py
-- ClockSample), and the readings it sent, duplicates included. Batches written before this
-- migration have nulls: no clock or rate.
alter table reading_batches
    add column skews_s real[],
    add column counts integer[];
-- device health reads the batches of a window in event time
create index reading_batches_max_ts on reading_batches (max_ts);

alter table detections
    add column acknowledged_by text,
    add column acknowledged_note text;

-- What changed and is not yet published: the subject's latest detection of a kind
-- (ref 'kind/subject'), a case's current state (ref case_id), a case transition (ref event_id).
-- Written by triggers, so every writer (scenes, the case API, the CLI, SQL by hand) is covered;
-- one row per ref however often it changes before the publisher reads it. Each change takes a
-- new seq: the publisher deletes a row only if its seq is still the one it published, so a
-- change made while it published is published again.
create sequence outbound_seq;
create table outbound (
    what      text not null check (what in ('detection', 'case', 'case_event')),
    ref       text not null,
    seq       bigint not null default nextval('outbound_seq'),
    queued_at timestamptz not null default now(),
    primary key (what, ref)
);
create index outbound_order on outbound (seq);

create function outbound_queue() returns trigger language plpgsql as $$
declare
    queued_what text;
    queued_ref text;
begin
    if tg_table_name = 'detections' then
        queued_what := 'detection';
        queued_ref := new.kind || '/' || new.subject;
    elsif tg_table_name = 'cases' then
        queued_what := 'case';
        queued_ref := new.case_id::text;
    else
        queued_what := 'case_event';
        queued_ref := new.event_id::text;
    end if;
    insert into outbound (what, ref) values (queued_what, queued_ref)
        on conflict (what, ref) do update set seq = excluded.seq, queued_at = excluded.queued_at;
    perform pg_notify('cityops_outbound', '');
    return null;
end $$;

-- only changes that show: a run that rewrites a detection as it was (updated_at aside) queues nothing
create trigger detections_outbound_insert after insert on detections
    for each row execute function outbound_queue();
create trigger detections_outbound_update after update on detections
    for each row when ((to_jsonb(old) - 'updated_at') is distinct from (to_jsonb(new) - 'updated_at'))
    execute function outbound_queue();
create trigger cases_outbound after insert or update on cases
    for each row execute function outbound_queue();
create trigger case_events_outbound after insert on case_events
    for each row execute function outbound_queue();

-- what is already there is published once too: the retained state starts complete
insert into outbound (what, ref)
    select distinct 'detection', kind || '/' || subject from detections;
insert into outbound (what, ref)
    select 'case', case_id::text from cases where state not in ('closed', 'cancelled');

-- What ingest needs to refresh its device map incrementally: the transaction that last registered
-- or retyped each device, and a tombstone per deleted device, both written by triggers so that
-- every writer (imports, auto-registration, SQL by hand) is covered. devices.last_seen updates
-- (every ingest batch) change neither. A reader keeps the snapshot it last read at and reads the
-- rows whose transaction that snapshot did not see (devices/registry.py): exactly the changes,
-- also those of transactions that were still running then.

alter table devices add column changed_xid xid8 not null default pg_current_xact_id();
create index devices_changed on devices (changed_xid);

create table devices_deleted (
    device_id    text primary key,
    deleted_xid  xid8 not null default pg_current_xact_id()
);
create index devices_deleted_changed on devices_deleted (deleted_xid);

create function devices_track_changes() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        insert into devices_deleted (device_id) values (old.device_id)
            on conflict (device_id) do update set deleted_xid = excluded.deleted_xid;
        return old;
    elsif tg_op = 'INSERT' then
        delete from devices_deleted where device_id = new.device_id;
        return new;
    end if;
    new.changed_xid := pg_current_xact_id();
    return new;
end $$;

create trigger devices_retyped before update of type on devices
    for each row when (old.type is distinct from new.type) execute function devices_track_changes();
create trigger devices_registered after insert on devices
    for each row execute function devices_track_changes();
create trigger devices_removed after delete on devices
    for each row execute function devices_track_changes();

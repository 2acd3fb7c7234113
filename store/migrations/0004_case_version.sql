-- A version per case row: a lifecycle action writes its event and the new row in one statement
-- that only applies if nobody changed the case since it was read (optimistic concurrency).
alter table cases add column version integer not null default 0;

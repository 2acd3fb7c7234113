-- Device identity (devices/credentials.py, devices/broker.py, docs/security.md): who may speak
-- on the broker, as what. Each device and each service account has at most one live credential
-- of each kind: a password (stored as PBKDF2-HMAC-SHA512, hex, with its salt, in the form both
-- Mosquitto's password file and EMQX's PostgreSQL authentication read) or a client certificate
-- of the deployment's own CA (CN = the device id; its serial and fingerprint are kept, never
-- its key). Revoked credentials stay, stamped, for the audit and the certificate revocation list.
-- A retired device keeps its history but may not speak.

alter table devices add column retired_at timestamptz;

create table broker_credentials (
    credential_id   bigint generated always as identity primary key,
    username        text not null check (username ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    -- a device with credentials is retired, not deleted: its revoked certificates stay listed
    device_id       text references devices (device_id) on delete restrict,
    -- a service account's role; a device's rights follow its type
    -- (control: cityops broker sync's own login, no topic at all)
    service_role    text check (service_role in ('ingest', 'scenes', 'reader', 'control')),
    kind            text not null check (kind in ('password', 'certificate')),
    password_hash   text,      -- hex PBKDF2-HMAC-SHA512 of the password
    password_salt   text,      -- the salt as text; its bytes are PBKDF2's salt
    iterations      integer,
    cert_serial     text,      -- hex
    cert_sha256     text,      -- hex fingerprint of the DER certificate
    issued_at       timestamptz not null default now(),
    not_after       timestamptz,
    revoked_at      timestamptz,
    check ((device_id is null) <> (service_role is null)),
    check (device_id is null or username = device_id),
    check ((kind = 'password') = (password_hash is not null and password_salt is not null
                                  and iterations is not null)),
    check ((kind = 'certificate') = (cert_serial is not null and cert_sha256 is not null))
);
create unique index broker_credentials_live on broker_credentials (username, kind)
    where revoked_at is null;
create index broker_credentials_device on broker_credentials (device_id);

-- Ingest refuses a retired device, and one whose credentials are all revoked: both change
-- what ingest's device map holds, so they are tracked as changes like a retype (0006).
alter table devices add column is_revoked boolean not null default false;

drop trigger devices_retyped on devices;
create trigger devices_retyped before update of type, gateway_id, retired_at, is_revoked on devices
    for each row when (old.type is distinct from new.type
                       or old.gateway_id is distinct from new.gateway_id
                       or old.retired_at is distinct from new.retired_at
                       or old.is_revoked is distinct from new.is_revoked)
    execute function devices_track_changes();

-- What may connect, and what each may do: one definition for Mosquitto's files (cityops broker
-- sync) and for EMQX's PostgreSQL authentication and authorization (docs/security.md), which
-- read these views directly. Topics are under the contract's root; a topic prefix is applied by
-- whoever writes them for a broker (mqtt.topic_prefix).
create view broker_logins as
select c.username, c.kind, c.password_hash, c.password_salt, c.iterations, c.not_after,
       c.cert_serial, c.device_id, c.service_role
from broker_credentials c
left join devices d using (device_id)
where c.revoked_at is null
  and (c.not_after is null or c.not_after > now())
  and (c.device_id is null or d.retired_at is null);

create view broker_acl as
-- a device speaks only for itself, a gateway only on its own tree (one row a device that may
-- log in, however many live credentials it has)
select d.device_id as username, 'publish' as action,
       'cityops/v1/' || d.type || '/' || d.device_id || '/#' as topic
from devices d
where exists (select 1 from broker_logins l where l.device_id = d.device_id)
union all
select l.username, r.action, r.topic
from broker_logins l
join (values
        ('ingest', 'subscribe', 'cityops/v1/#'),
        ('ingest', 'subscribe', '$share/+/cityops/v1/#'),
        ('scenes', 'publish', 'cityops/v1/out/#'),
        ('reader', 'subscribe', 'cityops/v1/out/#')
     ) as r (role, action, topic) on r.role = l.service_role;

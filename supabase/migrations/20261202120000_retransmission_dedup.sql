-- One row per uplink, even for copies accepted twice.
--
-- coap-server makes uplinks durable in batches: a batch message carries no
-- per-uplink Nats-Msg-Id, so NATS no longer recognises a CoAP
-- retransmission (RFC 7252 §4.5) that reached another instance, or the
-- same one after a restart, before the device had its answer. Both copies
-- then reach storage under two uplink_ids. They share a key: a hash of the
-- device, the CoAP message ID, the token and the payload (msg_key). The
-- database keeps the first copy written and drops the other:
--  * activity: a row whose msg_key matches another uplink's row of the same
--    device received within 247 s (EXCHANGE_LIFETIME: a retransmission is
--    never later; a device may reuse the message ID after it) is skipped,
--    and its uplink_id recorded in uplink_duplicates;
--  * sensor_data: rows of a recorded duplicate are skipped.
-- Copies written at once by two instances are serialised on the device's
-- row (select ... for no key update), so the second sees the first's
-- commit. Not FOR UPDATE: that lock also conflicts with the KEY SHARE
-- every foreign-key check on devices takes, so the REST writer's
-- sensor_data insert (a transaction of its own) and another instance's
-- activity insert waited on each other and deadlocked.
-- Rows without msg_key (written before this version) are not checked.

alter table public.activity add column if not exists msg_key text
  check (msg_key ~ '^[0-9a-f]{32}$');
comment on column public.activity.msg_key is 'Hash of what a CoAP retransmission repeats (device, message ID, token, payload): copies of one uplink share it, and only the first is kept.';
create index if not exists activity_msg_key_idx on public.activity (devid, msg_key, received_at)
  where msg_key is not null;

create table if not exists public.uplink_duplicates (
  uplink_id    uuid primary key,
  of_uplink_id uuid not null,
  devid        text not null,
  received_at  timestamptz not null,
  recorded_at  timestamptz not null default now()
);
comment on table public.uplink_duplicates is 'Second copies of uplinks (a retransmission accepted by two instances, or across a restart), dropped by the activity trigger; kept a week.';
create index if not exists uplink_duplicates_recorded_at_idx on public.uplink_duplicates (recorded_at);
alter table public.uplink_duplicates enable row level security;
revoke all on public.uplink_duplicates from anon, authenticated;
grant select on public.uplink_duplicates to service_role;

create or replace function public.activity_skip_copies() returns trigger
  language plpgsql
  security definer
  set search_path = ''
  as $$
declare
  first uuid;
begin
  perform 1 from public.devices where devid = new.devid for no key update;
  select a.uplink_id into first from public.activity a
   where a.devid = new.devid and a.msg_key = new.msg_key
     and a.received_at > new.received_at - interval '247 seconds'
     and a.received_at < new.received_at + interval '247 seconds'
     and a.uplink_id <> new.uplink_id
   limit 1;
  if first is null then
    return new;
  end if;
  insert into public.uplink_duplicates (uplink_id, of_uplink_id, devid, received_at)
    values (new.uplink_id, first, new.devid, new.received_at)
    on conflict (uplink_id) do nothing;
  delete from public.uplink_duplicates where recorded_at < now() - interval '7 days';
  return null;
end
$$;
comment on function public.activity_skip_copies() is 'Skips the activity row of a second copy of an uplink (same msg_key within 247 s) and records it in uplink_duplicates.';
revoke all on function public.activity_skip_copies() from public, anon, authenticated;

drop trigger if exists activity_skip_copies on public.activity;
create trigger activity_skip_copies
  before insert on public.activity
  for each row when (new.msg_key is not null)
  execute function public.activity_skip_copies();

create or replace function public.sensor_data_skip_copies() returns trigger
  language plpgsql
  security definer
  set search_path = ''
  as $$
begin
  if exists (select 1 from public.uplink_duplicates d where d.uplink_id = new.uplink_id) then
    return null;
  end if;
  return new;
end
$$;
comment on function public.sensor_data_skip_copies() is 'Skips the sensor_data rows of an uplink recorded as a second copy.';
revoke all on function public.sensor_data_skip_copies() from public, anon, authenticated;

drop trigger if exists sensor_data_skip_copies on public.sensor_data;
create trigger sensor_data_skip_copies
  before insert on public.sensor_data
  for each row
  execute function public.sensor_data_skip_copies();

-- Downlink delivery (coap-server/downlink):
--  * superseded_at: a newer queued configuration replaced this one before
--    the device applied it; it will never be sent (again). Stamped by
--    coap-server when it sends the newer row.
--  * a trigger notifies coap-server of every queued row (LISTEN
--    nbiot_downlink, payload = the row id), so the configuration is in
--    memory before the device's next uplink and the answer never waits on
--    the database.

alter table public.device_downlinks add column if not exists superseded_at timestamptz;
comment on column public.device_downlinks.superseded_at is
  'Set when a newer row for the same device was sent before this one was applied: this one will not be delivered.';

create or replace function public.device_downlinks_notify() returns trigger
  language plpgsql
  set search_path = ''
  as $$
begin
  perform pg_notify('nbiot_downlink', new.id::text);
  return null;
end
$$;
comment on function public.device_downlinks_notify() is 'Tells coap-server (LISTEN nbiot_downlink) that a downlink was queued.';

-- An owner queues rows as authenticated (RLS): the trigger runs as them,
-- and pg_notify needs no privilege.
revoke all on function public.device_downlinks_notify() from public, anon;

drop trigger if exists device_downlinks_notify on public.device_downlinks;
create trigger device_downlinks_notify
  after insert on public.device_downlinks
  for each row execute function public.device_downlinks_notify();

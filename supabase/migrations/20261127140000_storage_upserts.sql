-- Storage upserts (coap-server/storage): batches are written by several
-- workers and retried after failures, so an older batch can land after a
-- newer one. The direct Postgres writer guards against that in its SQL
-- (greatest(), where updated_at <=), but the REST writer goes through
-- PostgREST's merge-duplicates upsert, which can only overwrite. These
-- triggers keep both writers right:
--  * devices.last_seen_at never moves backwards;
--  * device_config is never replaced by a report older than the stored one.

create or replace function public.devices_keep_last_seen() returns trigger
  language plpgsql
  set search_path = ''
  as $$
begin
  if old.last_seen_at is not null and (new.last_seen_at is null or new.last_seen_at < old.last_seen_at) then
    new.last_seen_at := old.last_seen_at;
  end if;
  return new;
end
$$;
comment on function public.devices_keep_last_seen() is 'devices.last_seen_at only moves forward (batches may land out of order).';
revoke all on function public.devices_keep_last_seen() from public, anon, authenticated;

drop trigger if exists devices_keep_last_seen on public.devices;
create trigger devices_keep_last_seen
  before update of last_seen_at on public.devices
  for each row execute function public.devices_keep_last_seen();

create or replace function public.device_config_keep_newest() returns trigger
  language plpgsql
  set search_path = ''
  as $$
begin
  if new.updated_at < old.updated_at then
    return null; -- an older report: keep the stored row as it is
  end if;
  return new;
end
$$;
comment on function public.device_config_keep_newest() is 'device_config keeps the newest report (batches may land out of order).';
revoke all on function public.device_config_keep_newest() from public, anon, authenticated;

drop trigger if exists device_config_keep_newest on public.device_config;
create trigger device_config_keep_newest
  before update on public.device_config
  for each row execute function public.device_config_keep_newest();

-- The frontend lists a device's sensor data newest first, often without a
-- data_type filter.
create index if not exists sensor_data_devid_received_at_idx on public.sensor_data (devid, received_at desc);

-- Storage upserts (coap-server/storage): batches are written by several
-- workers and retried after failures, so an older batch can land after a
-- newer one. The direct Postgres writer guards against that in its SQL
-- (each upsert's where clause: last_seen_at <, updated_at <=), but the
-- REST writer goes through PostgREST's merge-duplicates upsert, which can
-- only overwrite. These
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
-- WHEN keeps the common case (time moving forward) free of a plpgsql call:
-- every uplink upserts its device, so this runs on the hot path.
create trigger devices_keep_last_seen
  before update of last_seen_at on public.devices
  for each row when (old.last_seen_at is not null and (new.last_seen_at is null or new.last_seen_at < old.last_seen_at))
  execute function public.devices_keep_last_seen();

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
  for each row when (new.updated_at < old.updated_at)
  execute function public.device_config_keep_newest();

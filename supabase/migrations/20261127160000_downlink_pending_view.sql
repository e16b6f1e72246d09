-- The pending downlink of each device, defined once for every reader
-- (coap-server's Postgres and REST modes, and any frontend): the newest row
-- of the device, and only if it is neither applied nor superseded. An
-- older row that commits late, behind a newer one already sent or applied,
-- is therefore never pending: the newest configuration wins.
-- security_invoker: readers see it under their own RLS policies.
create view public.device_downlinks_pending with (security_invoker = on) as
  select id, devid, config, created_at, sent_at
  from (
    select distinct on (devid) id, devid, config, created_at, sent_at, applied_at, superseded_at
    from public.device_downlinks
    order by devid, id desc
  ) newest
  where applied_at is null and superseded_at is null;

comment on view public.device_downlinks_pending is 'Per device, the configuration waiting to be applied (newest row, unless applied or superseded).';

revoke all on public.device_downlinks_pending from anon, authenticated;
grant select on public.device_downlinks_pending to service_role, authenticated;

-- A queued configuration is a handful of small numbers and two short
-- strings; a Downlink must fit in one CoAP answer (~1 KB). Bound what a
-- frontend may queue so one owner cannot make every poll of the pending
-- rows slow or fail.
alter table public.device_downlinks
  add constraint device_downlinks_config_size check (octet_length(config::text) <= 1024);

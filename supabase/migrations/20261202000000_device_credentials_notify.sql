-- Key changes reach coap-server at once (coap-server/dtls/keys_listen.go):
-- every insert, update or delete of a device_credentials row notifies
-- LISTEN nbiot_device_key with the devid, so a deleted or replaced key
-- ends that device's open DTLS session as soon as it commits. REST
-- deployments, which cannot LISTEN, keep polling.

create or replace function public.device_credentials_notify() returns trigger
  language plpgsql
  set search_path = ''
  as $$
begin
  perform pg_notify('nbiot_device_key', coalesce(new.devid, old.devid));
  return null;
end
$$;
comment on function public.device_credentials_notify() is 'Tells coap-server (LISTEN nbiot_device_key) that a device key was added, changed or deleted.';

revoke all on function public.device_credentials_notify() from public, anon, authenticated;

drop trigger if exists device_credentials_notify on public.device_credentials;
create trigger device_credentials_notify
  after insert or update or delete on public.device_credentials
  for each row execute function public.device_credentials_notify();

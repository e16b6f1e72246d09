-- nbiot-live core schema: devices, their reported configuration, activity,
-- sensor data, credentials and queued downlinks. Every table has RLS: a
-- signed-in user reads the rows of the devices they own (and may queue a
-- downlink for them); coap-server writes as service_role (BYPASSRLS).
-- Since 30 Oct 2026 new public tables get no automatic grants: every grant
-- is explicit below.

create table public.devices (
  devid        text primary key check (devid ~ '^[A-Za-z0-9_-]{1,64}$'),
  owner_id     uuid references auth.users (id) on delete set null,
  name         text check (char_length(name) <= 200),
  created_at   timestamptz not null default now(),
  last_seen_at timestamptz
);
create index devices_owner_id_idx on public.devices (owner_id);
comment on table public.devices is 'One row per device; created on its first uplink (owner set when provisioned or claimed).';

-- uint32 values from the device do not fit integer: bigint with a range check.
create table public.device_config (
  devid              text primary key references public.devices (devid) on delete cascade,
  heartbeat_interval bigint check (heartbeat_interval between 0 and 4294967295),
  hw_version         text check (char_length(hw_version) <= 64),
  fw_version         text check (char_length(fw_version) <= 64),
  gnss_interval      bigint check (gnss_interval between 0 and 4294967295),
  wifi_scan_interval bigint check (wifi_scan_interval between 0 and 4294967295),
  config_version     bigint check (config_version between 0 and 4294967295),
  updated_at         timestamptz not null default now()
);
comment on table public.device_config is 'The configuration each device last reported (upserted).';

create table public.activity (
  id           bigint generated always as identity primary key,
  uplink_id    uuid not null unique,
  devid        text not null references public.devices (devid) on delete cascade,
  uplink_count bigint not null check (uplink_count between 0 and 4294967295),
  sleep        bigint not null default 0 check (sleep >= 0),
  modem        bigint not null default 0 check (modem >= 0),
  gnss         bigint not null default 0 check (gnss >= 0),
  wifi         bigint not null default 0 check (wifi >= 0),
  other        bigint not null default 0 check (other >= 0),
  received_at  timestamptz not null
);
create index activity_devid_received_at_idx on public.activity (devid, received_at desc);
comment on column public.activity.uplink_id is 'Assigned once when coap-server accepts the uplink: a retried write cannot duplicate the row.';

create table public.sensor_data (
  id          bigint generated always as identity primary key,
  uplink_id   uuid not null,
  devid       text not null references public.devices (devid) on delete cascade,
  data_type   text not null check (data_type in ('temperature', 'wifi_scan', 'gnss', 'battery', 'reboot')),
  data        jsonb not null check (jsonb_typeof(data) = 'object'),
  received_at timestamptz not null,
  unique (uplink_id, data_type)
);
create index sensor_data_devid_type_received_at_idx on public.sensor_data (devid, data_type, received_at desc);

create table public.device_credentials (
  devid      text primary key references public.devices (devid) on delete cascade,
  psk        bytea not null check (length(psk) between 16 and 64),
  created_at timestamptz not null default now()
);
comment on table public.device_credentials is 'DTLS pre-shared keys. Server only: RLS on and no user policy.';

create table public.device_downlinks (
  id         bigint generated always as identity primary key,
  devid      text not null references public.devices (devid) on delete cascade,
  config     jsonb not null check (jsonb_typeof(config) = 'object'),
  created_at timestamptz not null default now(),
  sent_at    timestamptz,
  applied_at timestamptz
);
create index device_downlinks_pending_idx on public.device_downlinks (devid, id desc) where sent_at is null;
comment on table public.device_downlinks is 'Configuration queued for a device, sent in the answer to its next uplink; id is the config_version the device echoes.';

-- Row level security ---------------------------------------------------------

alter table public.devices enable row level security;
alter table public.device_config enable row level security;
alter table public.activity enable row level security;
alter table public.sensor_data enable row level security;
alter table public.device_credentials enable row level security;
alter table public.device_downlinks enable row level security;

create policy "owners read their devices" on public.devices
  for select to authenticated using (owner_id = (select auth.uid()));
create policy "owners rename their devices" on public.devices
  for update to authenticated using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));

create policy "owners read their device config" on public.device_config
  for select to authenticated using (exists (
    select 1 from public.devices d where d.devid = device_config.devid and d.owner_id = (select auth.uid())));
create policy "owners read their activity" on public.activity
  for select to authenticated using (exists (
    select 1 from public.devices d where d.devid = activity.devid and d.owner_id = (select auth.uid())));
create policy "owners read their sensor data" on public.sensor_data
  for select to authenticated using (exists (
    select 1 from public.devices d where d.devid = sensor_data.devid and d.owner_id = (select auth.uid())));
create policy "owners read their downlinks" on public.device_downlinks
  for select to authenticated using (exists (
    select 1 from public.devices d where d.devid = device_downlinks.devid and d.owner_id = (select auth.uid())));
create policy "owners queue downlinks" on public.device_downlinks
  for insert to authenticated with check (exists (
    select 1 from public.devices d where d.devid = device_downlinks.devid and d.owner_id = (select auth.uid())));
-- device_credentials: no user policy on purpose.

-- Grants -----------------------------------------------------------------------

revoke all on public.devices, public.device_config, public.activity, public.sensor_data,
  public.device_credentials, public.device_downlinks from anon, authenticated;

grant select, insert, update, delete on public.devices, public.device_config, public.activity,
  public.sensor_data, public.device_credentials, public.device_downlinks to service_role;
grant usage, select on all sequences in schema public to service_role;

grant select on public.devices, public.device_config, public.activity, public.sensor_data,
  public.device_downlinks to authenticated;
grant update (name) on public.devices to authenticated;
grant insert (devid, config) on public.device_downlinks to authenticated;

-- anon: nothing. A signed-out visitor has no device to see.

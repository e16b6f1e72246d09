-- Local stand-ins for what a Supabase project already has, so that the real
-- migrations (supabase/migrations) apply to a plain Postgres with
-- `supabase db push --db-url ...`. Never part of supabase/: a real project
-- has all of this. Idempotent.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  -- PostgREST's login role: it switches to anon/authenticated/service_role
  -- per request, as the local REST test server does.
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit password 'authenticator';
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
grant usage on schema public to anon, authenticated, service_role;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key default gen_random_uuid(),
  email text unique,
  created_at timestamptz not null default now()
);

-- Supabase's auth.uid() and auth.role(), as Supabase defines them: the
-- "sub" and "role" claims of the request's JWT, which PostgREST (and the
-- relay's Postgres access check) put in request.jwt.claims; the legacy
-- per-claim setting first, when it is not empty (a connection where it
-- was once set locally holds '' afterwards, not null).
create or replace function auth.uid() returns uuid
  language sql stable
  as $$
    select coalesce(
      nullif(current_setting('request.jwt.claim.sub', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
  $$;

create or replace function auth.role() returns text
  language sql stable
  as $$
    select coalesce(
      nullif(current_setting('request.jwt.claim.role', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
  $$;

grant execute on function auth.uid(), auth.role() to anon, authenticated, service_role;

-- Day partitions for `events` (by event time) and `dead_letters` (by when
-- the record died), so that retention drops whole days and each day's
-- indexes stay the size of one day; and a change log that moves window
-- bookkeeping out of the ingest transaction.
--
-- Partitions are created by the host (store/partitions.rs): days ahead of
-- time, and a missing day on demand. There is no DEFAULT partition.

-- ---------------------------------------------------------------- events
ALTER TABLE events RENAME TO events_before_0006;
ALTER INDEX events_pkey RENAME TO events_before_0006_pkey;
ALTER INDEX events_ts RENAME TO events_before_0006_ts;
ALTER INDEX events_user_ts RENAME TO events_before_0006_user_ts;

-- The columns of 0001 and 0005 but `event_time` (computed from `ts_ms` on
-- every insert, read by nothing of ours: `to_timestamp(ts_ms / 1000.0)`).
CREATE TABLE events (
    event_id       text NOT NULL,
    user_id        text NOT NULL,
    ts_ms          bigint NOT NULL,
    url            text NOT NULL,
    ip             text NOT NULL,
    user_agent     text NOT NULL,
    referrer       text,
    session_id     text,
    country        text NOT NULL,
    city           text NOT NULL,
    browser        text NOT NULL,
    os             text NOT NULL,
    device         text NOT NULL,
    plugin_name    text NOT NULL,
    plugin_version text NOT NULL,
    topic          text NOT NULL,
    "partition"    integer NOT NULL,
    "offset"       bigint NOT NULL,
    received_at    timestamptz NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    attributes     jsonb NOT NULL DEFAULT '{}',
    chain          text NOT NULL DEFAULT '',
    -- An event is its id and its time. Led by the time, the key grows at
    -- its right edge as events arrive in time order (a random id first
    -- would touch a random page of an ever larger index per insert), and it
    -- serves aggregation's time ranges, so `ts_ms` needs no index of its own.
    PRIMARY KEY (ts_ms, event_id)
) PARTITION BY RANGE (ts_ms);

-- Each user's events in order: the lookahead and the neighbour windows.
CREATE INDEX events_user_ts ON events (user_id, ts_ms, event_id);

-- ---------------------------------------------------------------- dead letters
ALTER TABLE dead_letters RENAME TO dead_letters_before_0006;
ALTER INDEX dead_letters_pkey RENAME TO dead_letters_before_0006_pkey;
ALTER INDEX dead_letters_pending RENAME TO dead_letters_before_0006_pending;
ALTER SEQUENCE dead_letters_id_seq OWNED BY NONE;

CREATE TABLE dead_letters (
    id           bigint NOT NULL DEFAULT nextval('dead_letters_id_seq'),
    topic        text NOT NULL,
    "partition"  integer NOT NULL,
    "offset"     bigint NOT NULL,
    record_key   bytea,
    payload      bytea NOT NULL,
    stage        text NOT NULL,
    kind         text NOT NULL,
    reason       text NOT NULL,
    plugin_version text,
    received_at  timestamptz NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz,
    replayed_event_id text,
    PRIMARY KEY (id, dead_at)
) PARTITION BY RANGE (dead_at);
ALTER SEQUENCE dead_letters_id_seq OWNED BY dead_letters.id;
-- One dead letter per offset is kept by the offsets lock of the ingest
-- transaction (a unique key would have to hold `dead_at`); replay finds
-- records by offset.
CREATE INDEX dead_letters_offset ON dead_letters (topic, "partition", "offset");
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at IS NULL;

-- ---------------------------------------------------------------- partitions
-- Creates the day partition of `parent` (events or dead_letters) holding
-- `day` when it is missing; true when it created one. Serialised by an
-- advisory lock so hosts creating the same day at once do not collide.
CREATE FUNCTION clickstream_ensure_day(parent text, day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    name text := parent || '_' || to_char(day, 'YYYYMMDD');
    lo text;
    hi text;
BEGIN
    IF parent NOT IN ('events', 'dead_letters') THEN
        RAISE EXCEPTION 'clickstream_ensure_day: unknown table %', parent;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('clickstream_ensure_day'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF parent = 'events' THEN
        lo := (extract(epoch FROM day::timestamp) * 1000)::bigint::text;
        hi := (extract(epoch FROM (day + 1)::timestamp) * 1000)::bigint::text;
    ELSE
        lo := quote_literal(day::text || ' 00:00:00+00');
        hi := quote_literal((day + 1)::text || ' 00:00:00+00');
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)', name, parent, lo, hi);
    RETURN true;
END
$$;

-- The rows of before, moved into their days.
DO $$
DECLARE
    d date;
BEGIN
    FOR d IN SELECT DISTINCT (to_timestamp(ts_ms / 1000.0) AT TIME ZONE 'UTC')::date FROM events_before_0006 LOOP
        PERFORM clickstream_ensure_day('events', d);
    END LOOP;
    FOR d IN SELECT DISTINCT (dead_at AT TIME ZONE 'UTC')::date FROM dead_letters_before_0006 LOOP
        PERFORM clickstream_ensure_day('dead_letters', d);
    END LOOP;
END
$$;
INSERT INTO events (event_id, user_id, ts_ms, url, ip, user_agent, referrer, session_id, country, city, browser, os, device,
                    plugin_name, plugin_version, topic, "partition", "offset", received_at, stored_at, attributes, chain)
SELECT event_id, user_id, ts_ms, url, ip, user_agent, referrer, session_id, country, city, browser, os, device,
       plugin_name, plugin_version, topic, "partition", "offset", received_at, stored_at, attributes, chain
FROM events_before_0006;
INSERT INTO dead_letters SELECT * FROM dead_letters_before_0006;
DROP TABLE events_before_0006;
DROP TABLE dead_letters_before_0006;

-- ---------------------------------------------------------------- window changes
-- What each ingest transaction changed, for the aggregator to turn into
-- window versions (aggregate_windows) on its own time: the windows of the
-- new events, and per user the first and last new event time (the user's
-- previous event, and stored events in between, change their windows'
-- time spent). Insert-only for ingest: no row every batch must lock.
CREATE TABLE window_changes (
    id        bigserial PRIMARY KEY,
    windows   bigint[] NOT NULL,
    users     text[] NOT NULL,
    first_ts  bigint[] NOT NULL,
    last_ts   bigint[] NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT now()
);

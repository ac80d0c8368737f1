-- Enriched clicks, one row per event id.
CREATE TABLE events (
    event_id       text PRIMARY KEY,
    user_id        text NOT NULL,
    ts_ms          bigint NOT NULL,
    event_time     timestamptz GENERATED ALWAYS AS (to_timestamp(ts_ms / 1000.0)) STORED,
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
    stored_at      timestamptz NOT NULL DEFAULT now()
);

-- What aggregation reads: the events of a time range, and each user's events in order.
CREATE INDEX events_ts ON events (ts_ms);
CREATE INDEX events_user_ts ON events (user_id, ts_ms, event_id);

-- The next offset to store per partition, written in the same transaction as
-- the events: PostgreSQL, not Kafka, decides what has been stored.
CREATE TABLE ingest_offsets (
    topic        text NOT NULL,
    "partition"  integer NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition")
);

-- Records that could not become events, with the raw bytes to replay them.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
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
    UNIQUE (topic, "partition", "offset")
);
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at IS NULL;

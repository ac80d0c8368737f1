-- The newest event time stored per partition: the watermark that decides
-- when a window is final is the lowest of these, minus the allowed lateness.
ALTER TABLE ingest_offsets ADD COLUMN max_ts_ms bigint;

-- Windows whose events changed since they were last aggregated. The store
-- bumps `version` in the transaction that stores the events; aggregation
-- records the version it read, so a change during a run leaves it dirty.
CREATE TABLE aggregate_windows (
    window_start_ms    bigint PRIMARY KEY,
    version            bigint NOT NULL DEFAULT 1,
    aggregated_version bigint NOT NULL DEFAULT 0,
    is_final           boolean NOT NULL DEFAULT false,
    changed_at         timestamptz NOT NULL DEFAULT now(),
    aggregated_at      timestamptz
);
CREATE INDEX aggregate_windows_dirty ON aggregate_windows (window_start_ms) WHERE version > aggregated_version;
CREATE INDEX aggregate_windows_open ON aggregate_windows (window_start_ms) WHERE NOT is_final;

-- The source of truth for aggregates; the search index is a copy, and
-- `indexed_at` tracks what the copy holds.
CREATE TABLE aggregates (
    window_start_ms     bigint NOT NULL,
    window_end_ms       bigint NOT NULL,
    url                 text NOT NULL,
    country             text NOT NULL,
    clicks              bigint NOT NULL,
    unique_users        bigint NOT NULL,
    time_spent_total_ms bigint NOT NULL,
    time_spent_samples  bigint NOT NULL,
    is_final            boolean NOT NULL,
    plugin_name         text NOT NULL,
    plugin_version      text NOT NULL,
    aggregated_at       timestamptz NOT NULL,
    indexed_at          timestamptz,
    index_error         text,
    PRIMARY KEY (window_start_ms, url, country)
);
CREATE INDEX aggregates_unindexed ON aggregates (window_start_ms) WHERE indexed_at IS NULL AND index_error IS NULL;

-- A window whose aggregation fails (a plugin trap, rows the plugin should not
-- return) is set aside with its error and retried with backoff; the other
-- windows go on.
ALTER TABLE aggregate_windows
    ADD COLUMN failures   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN failed_at  timestamptz,
    ADD COLUMN retry_at   timestamptz;
CREATE INDEX aggregate_windows_failing ON aggregate_windows (window_start_ms) WHERE last_error IS NOT NULL;

-- Aggregates are keyed by a hash of the URL: a btree row holds at most
-- ~2.7 kB, and a URL may be longer (up to 8 KiB is accepted).
ALTER TABLE aggregates ADD COLUMN url_md5 uuid GENERATED ALWAYS AS (md5(url)::uuid) STORED;
ALTER TABLE aggregates DROP CONSTRAINT aggregates_pkey;
ALTER TABLE aggregates ADD PRIMARY KEY (window_start_ms, url_md5, country);

-- A group gone from its window on re-aggregation: kept as a tombstone until
-- its document is deleted from the search index, then removed.
ALTER TABLE aggregates ADD COLUMN deleted boolean NOT NULL DEFAULT false;

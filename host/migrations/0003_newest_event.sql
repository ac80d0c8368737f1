-- The newest event time of each aggregated window, so the API can report
-- how long an event takes from happening to being searchable.
ALTER TABLE aggregates ADD COLUMN newest_event_ms bigint;

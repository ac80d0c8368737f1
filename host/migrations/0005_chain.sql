-- What the chain of transforms attached to each event, and which transforms
-- (names and versions, in order) produced it: `enrich@0.2.0,bot-filter@1.0.0`.
ALTER TABLE events
    ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN chain text NOT NULL DEFAULT '';

-- Records a transform dropped on purpose (filtering), counted per partition
-- and transform in the transaction that advances the partition's offset, so
-- records consumed = events stored (and duplicates) + dead letters + dropped
-- reconciles from PostgreSQL alone.
CREATE TABLE dropped_events (
    topic       text NOT NULL,
    "partition" integer NOT NULL,
    transform   text NOT NULL,
    dropped     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", transform)
);

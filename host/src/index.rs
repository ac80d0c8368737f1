//! Aggregates → the search server (Elasticsearch API).

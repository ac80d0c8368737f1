//! A test-only enricher for `clickstream:pipeline@9.0.0` (its WIT is a copy
//! of v0.1.0 under another version): the host must refuse it with what it
//! targets and what the host supports, before linking.

wit_bindgen::generate!({
    world: "enricher",
    path: "wit",
});

struct Plugin;

impl Guest for Plugin {
    fn name() -> String {
        "future".into()
    }

    fn version() -> String {
        "9.0.0".into()
    }

    fn configure(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(batch: Vec<RawClick>) -> Vec<Result<EnrichedClick, EnrichError>> {
        batch.into_iter().map(|_| Err(EnrichError { field: None, reason: "never loaded".into() })).collect()
    }
}

export!(Plugin);

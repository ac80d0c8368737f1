//! A changed pipeline.toml, applied by what each section's `change()` says:
//! live (the stages read their settings from watch channels), by draining
//! and restarting the pipeline (connections), or refused (what stored
//! aggregates mean).

use std::time::Instant;

use super::{ReloadError, Reloader};
use crate::config::PipelineConfig;
use crate::section::Apply;

impl Reloader {
    /// Re-reads pipeline.toml and applies what changed.
    pub async fn reload_config(&mut self) -> Result<(), ReloadError> {
        let next = match PipelineConfig::load(&self.config.file) {
            // An editor saving the same content, or a touch, is no change.
            Ok(next) if next == self.config => return Ok(()),
            Ok(next) => next,
            Err(e) => {
                self.stats.config_reloads(false, e.to_string());
                tracing::error!(error = %crate::redact::in_text(&e.to_string()), "pipeline.toml rejected; the running pipeline is untouched");
                return Err(e.into());
            }
        };
        let old = &self.config;
        let refused = match old.aggregate.change(&next.aggregate) {
            Apply::Refused(keys) => keys,
            _ => Vec::new(),
        };
        let new_tables = old.store.change(&next.store) != Apply::Unchanged;
        if !refused.is_empty() && !new_tables {
            let err = ReloadError::MetricsChanged { file: next.file.clone(), keys: refused.join(", ") };
            self.stats.config_reloads(false, err.to_string());
            tracing::error!(error = %err, "pipeline.toml rejected");
            return Err(err);
        }
        // Every plugin the file changes is proven before any is applied: a
        // reload applies whole or not at all, so this reloader's view (which
        // files it watches, what serves) always matches what runs.
        let started = Instant::now();
        let prepared = async {
            let chain = match old.transforms != next.transforms {
                true => Some(self.prepare_chain(&next).await?),
                false => None,
            };
            let aggregate = match old.plugins.aggregate.change(&next.plugins.aggregate) != Apply::Unchanged {
                true => Some(self.prepare_aggregate(next.aggregate_spec()).await?),
                false => None,
            };
            Ok::<_, ReloadError>((chain, aggregate))
        }
        .await;
        let (chain, aggregate) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.stats.config_reloads(false, crate::redact::in_text(&e.to_string()).into_owned());
                tracing::error!(error = %crate::redact::in_text(&e.to_string()), "pipeline.toml rejected; nothing of it applied");
                return Err(e);
            }
        };
        if let Some(plan) = chain {
            self.apply_chain(plan);
        }
        if let Some(loaded) = aggregate {
            self.apply_aggregate(next.aggregate_spec(), loaded, started);
        }
        let needs_restart = !refused.is_empty()
            || [
                old.source.change(&next.source),
                old.store.change(&next.store),
                old.geoip.change(&next.geoip),
                old.index.change(&next.index),
                old.api.change(&next.api),
            ]
            .contains(&Apply::Restart);
        self.live.batching.send_replace(next.batching());
        self.live.decode.send_replace(next.decode_limits());
        self.live.aggregate.send_replace(next.aggregate.clone());
        self.stats.config_reloads(true, if needs_restart { "applied; reconnecting".into() } else { "applied live".into() });
        tracing::info!(file = %next.file.display(), restart = needs_restart, "pipeline.toml applied");
        self.config = next.clone();
        if needs_restart {
            tracing::info!("connection settings changed: draining and reconnecting");
            self.restart.send_replace(Some(next));
        }
        Ok(())
    }
}

//! `indexing`, indexing: aggregate documents (`aggregation`'s rows) sent to the search
//! server through the index module's bulk path (`Indexer::index`: `_bulk`
//! requests of at most `bulk_max_bytes`, deterministic ids, retries) at bulk
//! sizes of 1, 5 and 10 MB, each into a fresh index deleted afterwards.

use std::time::Instant;

use elasticsearch::indices::{IndicesDeleteIndexTemplateParts, IndicesDeleteParts};
use serde_json::{json, Value};

use super::stats::rate;
use super::{progress, Bench, State};
use clickstream::stages::index::config::{IndexConfig, TimeSuffix};
use clickstream::stages::index::{AggregateDoc, Indexer};

/// Bulk sizes of the sweep, in MiB.
pub const BULK_MIB: [usize; 3] = [1, 5, 10];

/// `n` documents: `aggregation`'s rows, repeated on later days when there are fewer
/// (distinct ids), or synthetic ones when `aggregation` did not run.
pub fn documents(from: &[AggregateDoc], n: usize) -> Vec<AggregateDoc> {
    const DAY_MS: i64 = 86_400_000;
    let synthetic = |i: usize| AggregateDoc {
        window_start_ms: super::data::START_MS + (i as i64 / 500) * 60_000,
        window_end_ms: super::data::START_MS + (i as i64 / 500 + 1) * 60_000,
        url: format!("https://shop.example/products/item-{}", i % 100),
        country: ["DE", "FR", "US", "JP", "BR"][i % 5].into(),
        clicks: 10,
        unique_users: 3,
        time_spent_total_ms: 90_000,
        time_spent_samples: 7,
        avg_time_spent_s: AggregateDoc::average_time_spent_s(90_000, 7),
        is_final: true,
        plugin_name: "aggregate".into(),
        plugin_version: "bench".into(),
        aggregated_at_ms: 0,
    };
    (0..n)
        .map(|i| {
            if from.is_empty() {
                return synthetic(i);
            }
            let mut d = from[i % from.len()].clone();
            let shift = (i / from.len()) as i64 * DAY_MS;
            d.window_start_ms += shift;
            d.window_end_ms += shift;
            d
        })
        .collect()
}

/// Runs `indexing`.
pub async fn run(bench: &Bench, state: &State) -> anyhow::Result<Value> {
    let docs = documents(&state.aggregates, bench.sizes.index_docs as usize);
    let doc_bytes: usize = docs.iter().map(|d| serde_json::to_vec(d).map_or(0, |v| v.len()) + 100).sum();
    let mut sweep = Vec::new();
    for mib in BULK_MIB {
        let index = format!("bench-{}-bulk-{mib}mb", bench.unique);
        let indexer = Indexer::new(&IndexConfig {
            url: bench.services.search_url.clone(),
            index: index.clone(),
            time_suffix: TimeSuffix::None,
            bulk_max_bytes: mib << 20,
        })?
        .with_retry_budget(std::time::Duration::from_secs(120));
        indexer.ensure_mapping().await?;
        let t = Instant::now();
        let outcome = indexer.index(&docs).await;
        let secs = t.elapsed().as_secs_f64();
        // Clean up whatever happened: the server keeps indices in memory.
        let client = indexer.client();
        let _ = client.indices().delete(IndicesDeleteParts::Index(&[&index])).send().await;
        let _ = client.indices().delete_index_template(IndicesDeleteIndexTemplateParts::Name(&format!("{index}-template"))).send().await;
        let outcome = outcome?;
        anyhow::ensure!(
            outcome.rejected.is_empty(),
            "{} documents refused at {mib} MiB, e.g. {}",
            outcome.rejected.len(),
            outcome.rejected[0].reason
        );
        let r = rate(outcome.indexed as f64, secs);
        progress(format_args!("  bulk {mib} MiB: {r:.0} documents/s"));
        sweep.push(json!({
            "bulk_max_mib": mib,
            "documents": outcome.indexed,
            "requests": doc_bytes.div_ceil(mib << 20),
            "seconds": secs,
            "documents_per_s": r,
        }));
    }
    Ok(json!({
        "documents": docs.len(),
        "approx_bulk_bytes_total": doc_bytes,
        "source": if state.aggregates.is_empty() { "synthetic documents (`aggregation` did not run)" } else { "`aggregation`'s aggregate rows (repeated on later days when fewer)" },
        "sweep": sweep,
        "measures": "Indexer::index over all documents (bulk requests of at most the size), into a fresh index with the clickstream mapping; time to the last bulk response",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_repeat_on_later_days_with_distinct_ids() {
        let base = documents(&[], 3);
        let docs = documents(&base, 7);
        let ids: std::collections::HashSet<String> = docs.iter().map(Indexer::doc_id).collect();
        assert_eq!(ids.len(), 7);
    }
}

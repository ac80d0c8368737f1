//! The arms by name. Each has a number too (its place in the history of
//! docs/BENCHMARKS.md), accepted as an alias by `--arms`.

/// One arm: its number, its name and what it measures.
pub struct Arm {
    /// The number older results and notes use.
    pub n: u8,
    /// The name the report, the docs and `--arms` use.
    pub name: &'static str,
    /// What it measures, in a few words.
    pub title: &'static str,
}

/// Every arm, in the order of their numbers.
pub const ARMS: &[Arm] = &[
    Arm { n: 0, name: "broker", title: "broker ceiling" },
    Arm { n: 1, name: "ingest", title: "full pipeline" },
    Arm { n: 2, name: "copy-limit", title: "ingest limit (binary COPY)" },
    Arm { n: 3, name: "enrich-wasm", title: "native vs WASM enrich" },
    Arm { n: 4, name: "classic-insert", title: "classic INSERT + COMMIT per event" },
    Arm { n: 5, name: "aggregation", title: "aggregation: plugin vs SQL" },
    Arm { n: 6, name: "swap", title: "hot swap under load" },
    Arm { n: 7, name: "indexing", title: "indexing by bulk size" },
    Arm { n: 8, name: "chain", title: "full pipeline, three-transform chain" },
    Arm { n: 9, name: "languages", title: "a transform in JavaScript vs Rust" },
    Arm { n: 10, name: "chain-js", title: "full pipeline, enrich → utm (JavaScript)" },
    Arm { n: 11, name: "two-hosts", title: "full pipeline, two hosts in one group" },
    Arm { n: 12, name: "prefilled", title: "full pipeline on a table holding 4× the topic" },
    Arm { n: 13, name: "batched", title: "careful batched design (multi-row INSERT per 5,000)" },
    Arm { n: 14, name: "api-load", title: "full pipeline beside API load" },
    Arm { n: 15, name: "slow-shadow", title: "full pipeline beside a slow candidate in shadow" },
];

/// The arm numbered `n`.
pub fn by_number(n: u8) -> &'static Arm {
    ARMS.iter().find(|a| a.n == n).expect("every arm is in ARMS")
}

/// Reads one `--arms` entry: a name or its number.
pub fn parse(text: &str) -> Result<u8, String> {
    let text = text.trim();
    ARMS.iter()
        .find(|a| a.name == text || a.n.to_string() == text)
        .map(|a| a.n)
        .ok_or_else(|| format!("no arm `{text}`; the arms: {}", ARMS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arm_is_chosen_by_name_or_number_and_an_unknown_one_is_refused_with_the_list() {
        assert_eq!(parse("swap"), Ok(6));
        assert_eq!(parse("6"), Ok(6));
        let err = parse("swapp").unwrap_err();
        assert!(err.contains("no arm `swapp`") && err.contains("copy-limit"), "{err}");
    }

    #[test]
    fn names_and_numbers_are_unique() {
        let mut names: Vec<_> = ARMS.iter().map(|a| a.name).collect();
        let mut numbers: Vec<_> = ARMS.iter().map(|a| a.n).collect();
        names.sort();
        names.dedup();
        numbers.sort();
        numbers.dedup();
        assert_eq!((names.len(), numbers.len()), (ARMS.len(), ARMS.len()));
    }

    #[test]
    fn the_benchmarks_page_lists_every_arm_by_name_and_number() {
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/BENCHMARKS.md")).unwrap();
        for arm in ARMS {
            let row = format!("| `{}` | {} |", arm.name, arm.n);
            assert!(page.contains(&row), "docs/BENCHMARKS.md has no row `{row}` in its table of arms");
        }
    }
}

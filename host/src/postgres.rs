//! What a PostgreSQL error says, and text as PostgreSQL takes it: shared
//! by the stages that write (store, aggregate) and the tools that report.

use std::borrow::Cow;

/// What a PostgreSQL error says about the records that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Not the records: the server is unreachable, failing over, out of
    /// resources, shutting down, or refuses every write (a dropped table,
    /// revoked permissions). The same batch is retried until it goes in.
    Server,
    /// The records: a value out of range, a key too long for an index, a
    /// constraint or trigger that refuses them. Retrying fails the same way.
    Records {
        /// The dead-letter kind.
        kind: &'static str,
    },
}

/// Classifies an error by its SQLSTATE class. Anything not known to be the
/// server's, the connection's or the schema's is the records': isolating
/// them costs a few statements, while retrying a refused record forever
/// stops ingestion.
pub fn blame(error: &sqlx::Error) -> Blame {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => blame_sqlstate(&code),
            None => Blame::Server,
        },
        // A value the driver cannot even put on the wire.
        sqlx::Error::Encode(_) => Blame::Records { kind: "unencodable" },
        // I/O, TLS, protocol, pool timeouts: the connection, not the data.
        _ => Blame::Server,
    }
}

fn blame_sqlstate(code: &str) -> Blame {
    match code.get(..2).unwrap_or(code) {
        "22" => Blame::Records { kind: "invalid_value" },
        "23" => Blame::Records { kind: "constraint" },
        "54" => Blame::Records { kind: "limit_exceeded" },
        // 08 connection, 25 read-only transaction (a standby after failover),
        // 28 authorization, 3D/3F missing database or schema, 40 serialization
        // failure or deadlock, 42 syntax or access (a dropped table, revoked
        // privileges), 53 insufficient resources (disk full, too many
        // connections), 55 lock not available, 57 operator intervention
        // (admin shutdown, statement timeout), 58 system I/O, 0A unsupported,
        // F0 configuration, HV foreign data wrapper, XX internal.
        "08" | "25" | "28" | "3D" | "3F" | "40" | "42" | "53" | "55" | "57" | "58" | "0A" | "F0" | "HV" | "XX" => Blame::Server,
        // P0 (raised by a trigger), 44 (check option) and the rest.
        _ => Blame::Records { kind: "refused" },
    }
}

/// The message a user sees for an error: PostgreSQL's own words and SQLSTATE.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// Text as PostgreSQL accepts it: no NUL characters (which `text` cannot
/// hold), at most `max` bytes. Reasons and versions can come from plugins.
pub fn pg_text(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.contains('\0') {
        return Cow::Borrowed(text);
    }
    let mut clean = text.replace('\0', "\u{FFFD}");
    if clean.len() > max {
        clean.truncate(clean.floor_char_boundary(max.saturating_sub(3)));
        clean.push('…');
    }
    Cow::Owned(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_faults_are_told_apart_from_server_faults_by_sqlstate_class() {
        assert_eq!(blame_sqlstate("22021"), Blame::Records { kind: "invalid_value" });
        assert_eq!(blame_sqlstate("22008"), Blame::Records { kind: "invalid_value" });
        assert_eq!(blame_sqlstate("23505"), Blame::Records { kind: "constraint" });
        assert_eq!(blame_sqlstate("54000"), Blame::Records { kind: "limit_exceeded" });
        assert_eq!(blame_sqlstate("P0001"), Blame::Records { kind: "refused" });
        for server in ["08006", "40001", "40P01", "57P01", "53100", "25006", "42501", "42P01", "XX000"] {
            assert_eq!(blame_sqlstate(server), Blame::Server, "{server}");
        }
        assert_eq!(blame(&sqlx::Error::PoolTimedOut), Blame::Server);
    }

    #[test]
    fn text_loses_nul_characters_and_is_capped() {
        assert_eq!(pg_text("fine", 10), "fine");
        assert_eq!(pg_text("a\0b", 10), "a\u{FFFD}b");
        let text = "é".repeat(100);
        let long = pg_text(&text, 11);
        assert!(long.len() <= 11 && long.ends_with('…'), "{long}");
    }
}

//! The `log` import: a plugin's messages in the host's log, tagged with the
//! plugin's slot and rate-limited per instance, so a chatty or hostile
//! plugin cannot flood the log.

use std::time::Instant;

/// Messages a plugin may write per second on average.
const RATE_PER_SEC: f64 = 10.0;

/// Messages it may write at once after a quiet spell.
const BURST: f64 = 50.0;

/// Longest message kept, in bytes.
const MAX_MESSAGE_BYTES: usize = 1024;

/// One instance's log, with its token bucket.
#[derive(Debug)]
pub struct LogTap {
    plugin: String,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl LogTap {
    /// The log of the plugin in slot `plugin`.
    pub fn new(plugin: &str) -> LogTap {
        LogTap { plugin: plugin.to_string(), tokens: BURST, refilled: Instant::now(), suppressed: 0 }
    }

    /// Writes a message if the bucket allows; otherwise counts it, and says
    /// how many were suppressed with the next one that gets through.
    pub fn write(&mut self, level: tracing::Level, message: &str) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * RATE_PER_SEC).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1.0;
        let mut text = message;
        if text.len() > MAX_MESSAGE_BYTES {
            text = &text[..text.floor_char_boundary(MAX_MESSAGE_BYTES)];
        }
        // A line break or escape sequence could forge a line of the host's own.
        let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let (plugin, suppressed) = (self.plugin.as_str(), std::mem::take(&mut self.suppressed));
        match level {
            tracing::Level::ERROR => tracing::error!(plugin, suppressed, "{text}"),
            tracing::Level::WARN => tracing::warn!(plugin, suppressed, "{text}"),
            tracing::Level::INFO => tracing::info!(plugin, suppressed, "{text}"),
            _ => tracing::debug!(plugin, suppressed, "{text}"),
        }
    }

    /// Messages suppressed since the last one written.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let mut tap = LogTap::new("chatty");
        for i in 0..1000 {
            tap.write(tracing::Level::INFO, &format!("message {i}"));
        }
        // The burst, plus what trickled in while the loop ran (well under a second).
        assert!(tap.suppressed() >= 1000 - BURST as u64 - 10, "{}", tap.suppressed());
    }
}

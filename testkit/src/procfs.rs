//! What the benchmark reads about processes from `/proc`: their memory and
//! CPU time.

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// (VmHWM, VmRSS) of process `pid` in MiB: its peak and its current
/// resident memory.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// User + system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&stat)?.1)
}

/// User + system CPU seconds used so far by every process whose command
/// name starts with one of `names`, e.g. the PostgreSQL backends.
pub fn cpu_seconds_of(names: &[&str]) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat).map(|(comm, seconds)| (comm.to_string(), seconds)))
        .filter(|(comm, _)| names.iter().any(|n| comm.starts_with(n)))
        .map(|(_, seconds)| seconds)
        .sum()
}

/// The command name and the user + system CPU seconds of a
/// `/proc/<pid>/stat` line. The name is cut at the last `)`, because it may
/// itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); after the name they
    // are the 12th and 13th (0-based 11 and 12, counting from the state).
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((comm, ticks / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_cpu_fields() {
        let stat = "42 (tokio (worker 1)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat(stat), Some(("tokio (worker 1)", 3.0)));
    }
}

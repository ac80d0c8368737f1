//! Test MMDB files and MaxMind's own reader, through the Python scripts in
//! `tests/geoip/` (`mmdb-writer` and `maxminddb` from PyPI, installed with
//! pip on first use), so the host's reader is checked against code it
//! shares nothing with.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::root;

/// Installs the PyPI packages the scripts import, once per process, when
/// they are missing.
fn python_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let importable = || {
            Command::new("python3").args(["-c", "import maxminddb, mmdb_writer"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        };
        if !importable() {
            let install = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "maxminddb", "mmdb-writer"])
                .output()
                .expect("python3 is missing: install Python 3 with pip (apt-get install python3-pip)");
            assert!(
                install.status.success() && importable(),
                "cannot install the PyPI packages maxminddb and mmdb-writer ({}): run `python3 -m pip install maxminddb mmdb-writer`",
                String::from_utf8_lossy(&install.stderr).trim()
            );
        }
    });
}

/// Runs `tests/geoip/SCRIPT` with `input` (JSON text) on stdin; returns
/// its stdout. Panics, with its stderr, when it fails.
pub fn run_script(script: &str, input: &str) -> String {
    python_ready();
    let path = root().join("tests/geoip").join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    child.stdin.take().expect("piped").write_all(input.as_bytes()).expect("write to python3");
    let output = child.wait_with_output().expect("wait for python3");
    assert!(output.status.success(), "{} failed: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("the scripts print JSON")
}

/// Writes MMDB files with `tests/geoip/write_mmdb.py`; `specs` is the JSON
/// list its docstring describes.
pub fn write_mmdb(specs: &str) {
    run_script("write_mmdb.py", specs);
}

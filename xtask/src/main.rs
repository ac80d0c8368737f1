//! `xtask services up|down|status|env|geoip-update [SERVICE...]`, what
//! `scripts/services` runs. See [`xtask::services`].

use std::process::ExitCode;

use xtask::services::{run_each, Stack, ALL};

const USAGE: &str = "usage: scripts/services up|down|status [SERVICE...]
       scripts/services env        (eval \"$(scripts/services env)\")
       scripts/services geoip-update   (the newest GeoIP files, swapped in live)";

fn usage() -> ExitCode {
    eprintln!("{USAGE}\nSERVICE: {} (default: all)", ALL.join(" "));
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("services") => services(&args[1..]),
        _ => {
            eprintln!("usage: xtask services ...   (the dev stack; scripts/services runs it)");
            ExitCode::from(2)
        }
    }
}

fn services(args: &[String]) -> ExitCode {
    let Some(command) = args.first().map(String::as_str) else { return usage() };
    let named: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    if let Some(unknown) = named.iter().find(|s| !ALL.contains(s)) {
        eprintln!("services: unknown service: {unknown}");
        return usage();
    }
    let services = if named.is_empty() { ALL.to_vec() } else { named };
    let stack = Stack::here();
    let ok = match command {
        "up" | "down" | "geoip-update" => {
            if command == "geoip-update" && args.len() > 1 {
                return usage();
            }
            let _lock = match stack.lock(command) {
                Ok(lock) => lock,
                Err(failure) => {
                    failure.print();
                    return ExitCode::FAILURE;
                }
            };
            let ok = match command {
                "up" => run_each("up", &services, |s| stack.up(s)),
                "down" => run_each("down", &services, |s| stack.down(s)),
                _ => run_each("geoip-update", &["geoip"], |_| stack.geoip_update()),
            };
            if command == "up" && ok {
                eprintln!("services: ready; load the settings with: eval \"$(scripts/services env)\"");
            }
            ok
        }
        "status" => run_each("status", &services, |s| stack.status(s).map(|line| println!("{line}"))),
        "env" => match std::fs::read_to_string(stack.env_file()) {
            Ok(text) => {
                print!("{text}");
                true
            }
            Err(_) => {
                eprintln!("services: error: no .services/env yet");
                eprintln!("services:   fix: run: scripts/services up");
                false
            }
        },
        _ => return usage(),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

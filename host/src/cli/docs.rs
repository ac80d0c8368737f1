//! `clickstream completions SHELL` and `clickstream man`: shell completions
//! and manual pages generated from the command line's own definition, so they
//! never drift from it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Prints the completion script for a shell.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell. Install, e.g.:
    /// `clickstream completions bash > ~/.local/share/bash-completion/completions/clickstream`.
    pub shell: clap_complete::Shell,
}

/// Prints the manual page, or writes one per subcommand.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Write `clickstream.1` and a page per subcommand (`clickstream-run.1`,
    /// ...) into this folder instead of printing `clickstream.1`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Writes `shell`'s completions for `command` to `out`.
pub fn completions(args: CompletionsArgs, mut command: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, out);
    Ok(())
}

/// Renders `command`'s manual page(s).
pub fn man(args: ManArgs, command: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir).with_context(|| format!("writing manual pages into {}", dir.display()))?;
            eprintln!("man: wrote the manual pages into {} (read one with `man -l {}/clickstream.1`)", dir.display(), dir.display());
            Ok(())
        }
        None => Ok(clap_mangen::Man::new(command).render(out)?),
    }
}

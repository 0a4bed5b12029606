//! `officesync completions SHELL`: prints the shell completion script for
//! `officesync` on stdout, generated from the command line definition.

use std::io::{self, Write};

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use crate::exit::{CliError, Exit};
use crate::{Cli, Global};

/// Print the shell completion script for officesync (bash, zsh or fish).
///
/// Install it, for example: `officesync completions bash >
/// /etc/bash_completion.d/officesync`, `officesync completions zsh >
/// "${fpath[1]}/_officesync"`, `officesync completions fish >
/// ~/.config/fish/completions/officesync.fish`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells `officesync completions` supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(shell: CompletionShell) -> Shell {
        match shell {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

/// The completion script for `shell`.
pub fn script(shell: CompletionShell) -> Vec<u8> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(Shell::from(shell), &mut command, name, &mut out);
    out
}

/// Runs `officesync completions SHELL`.
pub fn run(args: CompletionsArgs, _global: &Global) -> Result<(), CliError> {
    let script = script(args.shell);
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`officesync completions bash | head`): stop quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(CliError::quiet(Exit::Success)),
        Err(e) => Err(CliError::failure(format!("cannot write to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_shell_gets_a_script_that_names_the_subcommands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let script = String::from_utf8(script(shell)).expect("UTF-8 script");
            assert!(!script.trim().is_empty(), "{shell:?}: empty script");
            assert!(script.contains("officesync"), "{shell:?}: no program name");
            for sub in ["status", "put", "completions"] {
                assert!(script.contains(sub), "{shell:?}: no subcommand {sub}");
            }
        }
    }

    #[test]
    fn parses_the_shell_name() {
        let cli = Cli::try_parse_from(["officesync", "completions", "zsh"]).expect("parses");
        assert!(matches!(
            cli.command,
            crate::Command::Completions(CompletionsArgs {
                shell: CompletionShell::Zsh
            })
        ));
        assert!(Cli::try_parse_from(["officesync", "completions", "tcsh"]).is_err());
    }
}

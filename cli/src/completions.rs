//! Documentation generated from the command line definition: `officesync
//! completions SHELL` prints a shell completion script, `officesync man`
//! writes the manual pages (one per subcommand).

use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;
use serde_json::json;

use crate::exit::CliError;
use crate::output::{print_json, print_text, write_stdout};
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
    write_stdout(&script(args.shell))
}

/// Write the manual pages of officesync (section 1), or print the main page.
///
/// With `--dir DIR`, writes `officesync.1` and one page per subcommand
/// (`officesync-put.1`, `officesync-ca-issue.1`, ...) into DIR, for example
/// `officesync man --dir /usr/local/share/man/man1 && mandb`. Without it,
/// prints `officesync.1` on stdout: `officesync man | man -l -`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write every page into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The manual section of every page.
const MAN_SECTION: &str = "1";

/// The manual pages: `(file name, roff text)` of the main page and of every
/// subcommand at any depth, in command order (`help` left out).
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let mut pages = Vec::new();
    collect_pages(command, &mut pages)?;
    Ok(pages)
}

/// Renders `command`'s page, then its subcommands' pages, into `pages`.
fn collect_pages(command: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let man = clap_mangen::Man::new(command)
        .section(MAN_SECTION)
        .source(concat!("officesync ", env!("CARGO_PKG_VERSION")))
        .manual("officesync manual");
    let mut text = Vec::new();
    man.render(&mut text)?;
    pages.push((man.get_filename(), text));
    for sub in subcommands {
        collect_pages(sub, pages)?;
    }
    Ok(())
}

/// Runs `officesync man [--dir DIR]`.
pub fn man(args: ManArgs, global: &Global) -> Result<(), CliError> {
    let pages = man_pages()
        .map_err(|e| CliError::failure(format!("cannot render the manual pages: {e}")))?;
    let Some(dir) = args.dir else {
        let main = pages
            .into_iter()
            .next()
            .ok_or_else(|| CliError::failure("no manual page was rendered".to_owned()))?;
        return write_stdout(&main.1);
    };
    let written = write_pages(&dir, &pages)?;
    if global.json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        return print_json(&json!({ "dir": dir.display().to_string(), "pages": files }));
    }
    let mut text = format!("wrote {} manual pages to {}", written.len(), dir.display());
    for path in &written {
        text.push_str(&format!("\n  {}", path.display()));
    }
    print_text(&text)
}

/// Writes `pages` into `dir` (created if missing) and returns their paths.
fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(pages.len());
    for (name, text) in pages {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
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
    fn one_man_page_per_command() {
        let pages = man_pages().expect("rendered");
        let names: Vec<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names.first(), Some(&"officesync.1"));
        for name in [
            "officesync-put.1",
            "officesync-status.1",
            "officesync-ca.1",
            "officesync-ca-issue.1",
            "officesync-config-check.1",
            "officesync-man.1",
        ] {
            assert!(names.contains(&name), "no {name} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let unique: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicate pages: {names:?}");
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

//! Offline bundles (admin only): `bundle want` at a cut-off office writes what it holds,
//! `bundle export` at the general office writes a signed bundle of what that office lacks, and
//! `bundle import` at the office checks the bundle whole and applies it.
//!
//! A bundle is at most 256 MiB; these commands wait up to 10 minutes for the daemon (or
//! `--timeout`, when longer).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use officesync_api::{BundleInfo, ExportRequest, ImportReport, WantBody};
use officesync_daemon::bundle::{frame, MAX_BUNDLE_BYTES};
use serde_json::json;
use ureq::http::Method;

use crate::exit::CliError;
use crate::output::{escape_text, print_json, print_text, Table};
use crate::Global;

/// Shortest wait for a bundle request: reading, checking and applying 256 MiB takes a while.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest want file read (a vector for each of up to 1024 collections).
const MAX_WANT_BYTES: u64 = 64 << 20;

/// `bundle`: carry versions to an office whose link is down.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// At the cut-off office: write what this node holds (its version vectors) to a want file.
    Want(WantArgs),
    /// At the general office: write a bundle of versions, signed by this node.
    Export(ExportArgs),
    /// At the cut-off office: check a bundle (every signature) and apply all of it, or nothing.
    Import(ImportArgs),
}

/// `bundle want --output FILE`.
#[derive(Debug, Args)]
pub struct WantArgs {
    /// The want file to write.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
}

/// `bundle export --output FILE [--collections c1,c2] [--for NODE] [--want FILE]`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The bundle file to write.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Only these collections, comma-separated (`_nodes` and `_policy` always go in)
    /// [default: every collection].
    #[arg(long, value_name = "C1,C2")]
    pub collections: Option<String>,
    /// The office it is for: only what it may read goes in, and only it may import it
    /// [default: the want's node].
    #[arg(long = "for", value_name = "NODE")]
    pub for_node: Option<String>,
    /// The office's want file: only what it lacks goes in [default: everything].
    #[arg(long, value_name = "FILE")]
    pub want: Option<PathBuf>,
}

/// `bundle import FILE`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file.
    pub file: PathBuf,
}

impl BundleCommand {
    /// Runs the subcommand.
    pub fn run(self, global: &Global) -> Result<(), CliError> {
        let mut global = global.clone();
        global.timeout = global.timeout.max(BUNDLE_TIMEOUT);
        match self {
            BundleCommand::Want(args) => want(args, &global),
            BundleCommand::Export(args) => export(args, &global),
            BundleCommand::Import(args) => import(args, &global),
        }
    }
}

fn want(args: WantArgs, global: &Global) -> Result<(), CliError> {
    let answer: WantBody = global
        .client()?
        .send(Method::GET, "/v1/bundle/want", None)?
        .check(None)?
        .json()?;
    let text = serde_json::to_vec_pretty(&answer)
        .map_err(|e| CliError::failure(format!("cannot encode the want: {e}")))?;
    write_file(&args.output, &text, 0o644)?;
    if global.json {
        return print_json(&json!({
            "file": args.output,
            "node": answer.node,
            "collections": answer.vvs.len(),
        }));
    }
    print_text(&format!(
        "wrote {}: what node {} holds of {} collections; take it to the general office and run \
         `officesync bundle export --want {} --output FILE` there\n",
        args.output.display(),
        escape_text(&answer.node),
        answer.vvs.len(),
        args.output.display()
    ))
}

fn export(args: ExportArgs, global: &Global) -> Result<(), CliError> {
    let want = match &args.want {
        None => None,
        Some(path) => {
            let bytes = read_file(path, MAX_WANT_BYTES, "want file")?;
            let want: WantBody = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::usage(format!(
                    "{} is not a want file (`officesync bundle want` writes one): {e}",
                    path.display()
                ))
            })?;
            Some(want)
        }
    };
    let request = ExportRequest {
        collections: args.collections.as_deref().map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        for_node: args.for_node,
        want,
    };
    let body = serde_json::to_vec(&request)
        .map_err(|e| CliError::failure(format!("cannot encode the request: {e}")))?;
    let client = global.client()?;
    let bytes = client
        .send(Method::POST, "/v1/bundle/export", Some(body))?
        .check(None)?
        .bytes_up_to(MAX_BUNDLE_BYTES as u64)?;
    let info = frame::read_info(&bytes).map_err(|e| {
        CliError::failure(format!(
            "officesyncd at {} answered the export with something that is not a bundle: {e}",
            client.addr()
        ))
    })?;
    write_file(&args.output, &bytes, 0o600)?;
    if global.json {
        return print_json(&json!({
            "file": args.output,
            "bytes": bytes.len(),
            "bundle": info,
        }));
    }
    print_text(&render_export(&args.output, bytes.len(), &info))
}

fn import(args: ImportArgs, global: &Global) -> Result<(), CliError> {
    // The daemon judges the bundle (and records a refusal in its audit log).
    let bytes = read_file(&args.file, MAX_BUNDLE_BYTES as u64, "bundle")?;
    let report: ImportReport = global
        .client()?
        .send(Method::POST, "/v1/bundle/import", Some(bytes))?
        .check(None)?
        .json()?;
    if global.json {
        return print_json(&report);
    }
    print_text(&render_import(&args.file, &report))
}

/// What `bundle export` says: the file, whom it is for, and what it holds per collection.
fn render_export(path: &Path, bytes: usize, info: &BundleInfo) -> String {
    let mut text = format!(
        "wrote {} ({bytes} bytes): {} versions of {} collections from {}, for {}{}\n",
        path.display(),
        info.versions,
        info.collections.len(),
        escape_text(&info.exporter),
        info.for_node
            .as_deref()
            .map_or("any node".to_owned(), escape_text),
        if info.incremental {
            " (only what its want lacked)"
        } else {
            ""
        }
    );
    if !info.collections.is_empty() {
        let mut table = Table::new(&["COLLECTION", "VERSIONS", "ORIGINS"]);
        for c in &info.collections {
            table.row(vec![
                escape_text(&c.name),
                c.versions.to_string(),
                c.origins.to_string(),
            ]);
        }
        text.push_str(&table.render(""));
    }
    text
}

/// What `bundle import` says.
fn render_import(path: &Path, report: &ImportReport) -> String {
    let mut text = format!(
        "imported {} from {}: {} of its {} versions applied, {} already held\n",
        path.display(),
        escape_text(&report.exporter),
        report.applied,
        report.versions,
        report.ignored
    );
    if !report.collections.is_empty() {
        let mut table = Table::new(&["COLLECTION", "VERSIONS", "DIGEST"]);
        for c in &report.collections {
            table.row(vec![
                escape_text(&c.name),
                c.versions.to_string(),
                c.digest.chars().take(16).collect(),
            ]);
        }
        text.push_str(&table.render(""));
    }
    text
}

/// Reads `path` whole, refusing one over `max` bytes (a usage error).
fn read_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot open {what} {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(CliError::usage(format!(
            "{} is larger than a {what} may be ({max} bytes)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Writes `path` whole (atomically, with `mode`).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    officesync_daemon::pki::write_atomic(path, bytes, mode)
        .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use officesync_api::BundleCollection;

    #[test]
    fn export_summary_names_the_target_and_each_collection() {
        let info = BundleInfo {
            exporter: "general-office".into(),
            exporter_certificate: String::new(),
            created_ms: 0,
            for_node: Some("hefei".into()),
            incremental: true,
            versions: 7,
            body_bytes: 100,
            collections: vec![BundleCollection {
                name: "situation".into(),
                versions: 7,
                origins: 2,
            }],
        };
        let text = render_export(Path::new("b.bundle"), 512, &info);
        assert!(text.starts_with("wrote b.bundle (512 bytes): 7 versions of 1 collections from general-office, for hefei (only what its want lacked)"), "{text}");
        assert!(text.contains("situation"), "{text}");
    }
}

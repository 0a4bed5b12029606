//! officesyncd: the officesync node daemon. Reads one config file, opens the store, serves
//! the local API, and shuts down cleanly on SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use officesync_daemon::config::access::Account;
use officesync_daemon::config::Config;
use officesync_daemon::node::Node;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The officesync node daemon.
#[derive(Debug, Parser)]
#[command(name = "officesyncd", version = officesync_daemon::VERSION, about)]
struct Args {
    /// Path of the node's TOML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Check the config (and certificates) and exit.
    #[arg(long)]
    check: bool,
    /// With the daemon stopped: seal every value of the store with [storage]
    /// encryption_key_file (encrypting a store kept in clear until now, or re-sealing values
    /// of previous_encryption_key_files so they can be retired), then exit. Resumes if
    /// interrupted.
    #[arg(long, conflicts_with = "check")]
    rekey: bool,
    /// With the daemon stopped: rebuild node.data_dir from a backup file (`officesync backup`)
    /// as a new incarnation of this node, then exit. Refuses a data dir in use, or one that
    /// holds anything unless --force.
    #[arg(long, value_name = "BACKUP", conflicts_with_all = ["check", "rekey"])]
    restore: Option<PathBuf>,
    /// With --restore: move a data dir that holds anything aside (DATA_DIR.before-restore-TIME)
    /// instead of refusing.
    #[arg(long, requires = "restore")]
    force: bool,
    /// Log format on stderr: human-readable text, or one JSON object per line (with the
    /// current span's fields) for log collectors. `RUST_LOG` sets the level either way.
    #[arg(
        long,
        value_enum,
        env = "OFFICESYNC_LOG_FORMAT",
        value_name = "FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

/// How officesyncd writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields and the current span.
    Json,
}

/// The log subscriber for `format`, filtered by `filter`, writing to `writer`.
///
/// `ansi` colours text lines; JSON lines are never coloured.
fn log_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// How long an idle blocking thread of the runtime lives.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

/// mimalloc: sled's page reads and the writer's batches allocate per record, and glibc's
/// allocator showed as a large share of query and catch-up profiles. The `system-allocator`
/// feature leaves it out, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest block glibc's malloc serves from its arenas; larger ones are mapped on their own.
#[cfg(target_env = "gnu")]
const MALLOC_MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Pins glibc's mmap threshold at [`MALLOC_MMAP_THRESHOLD`]. glibc's malloc serves the C code
/// in the daemon, chiefly zstd, whose stream contexts (0.2 to 1.3 MB) are made when a
/// session's stream gets busy and freed when it goes idle. By default glibc raises the
/// threshold to the largest mapped block freed, so after the first context is dropped the
/// next ones come from per-thread arenas, which keep the memory once it is freed: a relay's
/// resident memory grew with every round of busy sessions. Pinned, each context is mapped
/// and unmapped whole.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn pin_malloc_mmap_threshold() {
    // SAFETY: mallopt only sets a tunable of glibc's allocator, which it reads under its own
    // lock; it takes no pointer. Called once, before any other thread starts.
    let done = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) };
    if done != 1 {
        eprintln!("officesyncd: glibc refused to pin its mmap threshold (mallopt returned {done})");
    }
}

/// Other C libraries have no such tunable to pin.
#[cfg(not(target_env = "gnu"))]
fn pin_malloc_mmap_threshold() {}

fn main() -> ExitCode {
    pin_malloc_mmap_threshold();
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = log_subscriber(
        args.log_format,
        filter,
        std::io::stderr().is_terminal(),
        std::io::stderr,
    );
    if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("officesyncd: cannot set up logging: {e}");
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("officesyncd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("officesyncd: config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.rekey {
        return rekey(&config);
    }
    if let Some(file) = &args.restore {
        return restore(&config, file, args.force);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (store reads) come in bursts, one per session at a catch-up; an
        // idle one ends after this instead of tokio's 10 s, taking its stack and its
        // allocator pages with it (a relay's memory per idle session).
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("officesyncd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    // Handlers first: a SIGTERM that arrives once the API answers (a `systemctl stop` right
    // after the start) must shut down cleanly, not kill the process.
    let signal = shutdown_signal();
    let node = match Node::start(&config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("officesyncd: {e}{}", access_problem(&config));
            return ExitCode::FAILURE;
        }
    };
    // Under a `Type=notify` systemd unit, `systemctl start` returns once the node serves.
    if let Err(e) = officesync_daemon::notify::notify("READY=1\nSTATUS=serving") {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let _ = officesync_daemon::notify::notify("STOPPING=1");
    match node.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("officesyncd: shutdown failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--rekey`: seals every value with the current storage key and says what it did.
fn rekey(config: &Config) -> ExitCode {
    match officesync_daemon::node::rekey_store(config) {
        Ok(report) => {
            let key = report
                .key_id
                .map_or_else(String::new, |id| format!(" (key id {id})"));
            println!(
                "officesyncd: every value of the store in {} is sealed with {}{key}: {} values, \
                 {} encrypted, {} re-sealed from previous keys; \
                 storage.previous_encryption_key_files may now be removed",
                config.node.data_dir.display(),
                config
                    .storage
                    .encryption_key_file
                    .as_deref()
                    .map_or_else(String::new, |f| f.display().to_string()),
                report.values,
                report.encrypted,
                report.resealed,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("officesyncd: {e}{}", access_problem(config));
            ExitCode::FAILURE
        }
    }
}

/// `--restore`: rebuilds the data dir from a backup and says what it did.
fn restore(config: &Config, file: &std::path::Path, force: bool) -> ExitCode {
    match officesync_daemon::backup::restore(config, file, force) {
        Ok(report) => {
            let aside = report.moved_aside.as_ref().map_or_else(String::new, |p| {
                format!("; the data dir that was there is now {}", p.display())
            });
            println!(
                "officesyncd: restored {} from {} (taken {} by {}): {} store rows; this node is \
                 now the new incarnation {} (the copy's {} is a past incarnation, and its \
                 versions stay valid); start the daemon, and what the copy lacks comes back \
                 from its peers{aside}",
                report.data_dir.display(),
                file.display(),
                officesync_daemon::time::rfc3339_ms(report.header.created_unix_ms),
                report.header.release,
                report.rows,
                report.new_replica,
                report.old_replica,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("officesyncd: restore refused: {e}");
            ExitCode::from(2)
        }
    }
}

/// After a failed start: `; ` and what stops this process's user from using the files `config`
/// names (the data dir, most likely), from their owners and modes; empty if nothing does.
fn access_problem(config: &Config) -> String {
    let Some(me) = Account::current() else {
        return String::new();
    };
    match config.check_access(&me) {
        Ok(_) => String::new(),
        Err(e) => format!("; {e}"),
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future ends at the first of
/// them, with its name.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the daemon can only be killed; wait on Ctrl-C instead.
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    /// A log writer that keeps what it is given, for the tests to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8(bytes.clone()).expect("UTF-8 log")
        }
    }

    /// Logs one event inside a `peer` span, and one filtered out, with `format`.
    fn log_sample(format: LogFormat) -> String {
        let out = Captured::default();
        let subscriber = log_subscriber(format, EnvFilter::new("info"), false, out.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("peer", peer = "hefei");
            let _entered = span.enter();
            tracing::info!(records = 3, "caught up");
            tracing::debug!("not shown at info");
        });
        out.text()
    }

    #[test]
    fn json_lines_parse_and_carry_the_span() {
        let text = log_sample(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "caught up");
        assert_eq!(line["fields"]["records"], 3);
        assert_eq!(line["span"]["name"], "peer");
        assert_eq!(line["span"]["peer"], "hefei");
        assert!(line["timestamp"].is_string());
        assert!(line.get("spans").is_none(), "no span list: {line}");
    }

    #[test]
    fn text_lines_stay_plain_text() {
        let text = log_sample(LogFormat::Text);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("caught up"));
        assert!(text.contains("peer{peer=\"hefei\"}"), "{text}");
        assert!(!text.contains('\u{1b}'), "no ANSI codes: {text}");
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[test]
    fn log_format_comes_from_flag_env_or_default() {
        let parse = |args: &[&str]| Args::try_parse_from(args).map(|a| a.log_format);
        // The environment variable is not set in tests, so the default applies.
        if std::env::var_os("OFFICESYNC_LOG_FORMAT").is_none() {
            assert_eq!(
                parse(&["officesyncd", "-c", "x.toml"]).ok(),
                Some(LogFormat::Text)
            );
        }
        assert_eq!(
            parse(&["officesyncd", "-c", "x.toml", "--log-format", "json"]).ok(),
            Some(LogFormat::Json)
        );
        assert!(parse(&["officesyncd", "-c", "x.toml", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}

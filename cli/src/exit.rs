//! Exit codes of `officesync` and the error type that carries one.
//!
//! Scripts and tests rely on the codes (DESIGN.md, "CLI"), so every failure
//! path ends in a [`CliError`] that names its [`Exit`] explicitly.

use std::fmt;
use std::process::ExitCode;

/// The process exit code of `officesync`. The numbers are a stable interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what was asked.
    Success = 0,
    /// 1: the key does not exist (the daemon answered 404 on a record).
    NotFound = 1,
    /// 2: usage error: bad arguments (clap exits with 2 as well), or the
    /// daemon rejected the request with a 4xx (invalid name, value too
    /// large, bad query).
    Usage = 2,
    /// 3: the daemon could not be reached (connection refused, timeout,
    /// unknown host).
    Unreachable = 3,
    /// 4: any other failure: a 5xx from the daemon, an unexpected answer, a
    /// local I/O error.
    Failure = 4,
    /// 5: the daemon refused to authenticate the request: no token, a wrong or
    /// removed one (HTTP 401), or too many failed attempts from this address
    /// (HTTP 429).
    Unauthenticated = 5,
    /// 6: the token's user may not do this (HTTP 403: its role or collection
    /// list, or the node's policy).
    Forbidden = 6,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for an HTTP status from the daemon.
    ///
    /// `record` says the request named one record (get, delete), where 404
    /// means "key not found"; anywhere else a 404 means the daemon lacks the
    /// endpoint, which is a failure, not a usage error.
    pub fn for_status(status: u16, record: bool) -> Exit {
        match status {
            200..=299 => Exit::Success,
            404 if record => Exit::NotFound,
            404 => Exit::Failure,
            401 | 429 => Exit::Unauthenticated,
            403 => Exit::Forbidden,
            // Timeouts are the daemon's state, not the user's mistake.
            408 => Exit::Failure,
            400..=499 => Exit::Usage,
            _ => Exit::Failure,
        }
    }

    /// The exit code for a request that got no HTTP answer at all.
    pub fn for_transport(error: &ureq::Error) -> Exit {
        match error {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed => Exit::Unreachable,
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => Exit::Usage,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// A failed command: the exit code and the one-line message for stderr.
#[derive(Debug)]
pub struct CliError {
    /// How the process exits.
    pub exit: Exit,
    /// What to print on stderr (after `error: `); `None` stops quietly.
    pub message: Option<String>,
}

impl CliError {
    /// An error with exit code `exit` and `message` for stderr.
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: Some(message.into()),
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    /// Any other failure (exit 4).
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Failure, message)
    }

    /// Stop with `exit` and print nothing (the reader of stdout went away).
    pub fn quiet(exit: Exit) -> CliError {
        CliError {
            exit,
            message: None,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => f.write_str(message),
            None => write!(f, "exit {}", self.exit.code()),
        }
    }
}

impl std::error::Error for CliError {}

/// Lets commands use `?` on `anyhow` results; such errors are failures (exit 4).
impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> CliError {
        CliError::failure(format!("{error:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn codes_are_the_documented_numbers() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::NotFound.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::Unreachable.code(), 3);
        assert_eq!(Exit::Failure.code(), 4);
        assert_eq!(Exit::Unauthenticated.code(), 5);
        assert_eq!(Exit::Forbidden.code(), 6);
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        assert_eq!(Exit::for_status(200, true), Exit::Success);
        assert_eq!(Exit::for_status(204, false), Exit::Success);
        assert_eq!(Exit::for_status(404, true), Exit::NotFound);
        assert_eq!(Exit::for_status(404, false), Exit::Failure);
        assert_eq!(Exit::for_status(400, true), Exit::Usage);
        assert_eq!(Exit::for_status(403, false), Exit::Forbidden);
        assert_eq!(Exit::for_status(413, true), Exit::Usage);
        assert_eq!(Exit::for_status(422, false), Exit::Usage);
        assert_eq!(Exit::for_status(429, false), Exit::Unauthenticated);
        assert_eq!(Exit::for_status(500, true), Exit::Failure);
        assert_eq!(Exit::for_status(503, false), Exit::Failure);
        assert_eq!(Exit::for_status(302, false), Exit::Failure);
    }

    #[test]
    fn transport_errors_map_to_exit_codes() {
        let refused = ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(Exit::for_transport(&refused), Exit::Unreachable);
        let timeout = ureq::Error::Timeout(ureq::Timeout::Connect);
        assert_eq!(Exit::for_transport(&timeout), Exit::Unreachable);
        assert_eq!(
            Exit::for_transport(&ureq::Error::HostNotFound),
            Exit::Unreachable
        );
        assert_eq!(
            Exit::for_transport(&ureq::Error::BadUri("x".into())),
            Exit::Usage
        );
        assert_eq!(
            Exit::for_transport(&ureq::Error::TooManyRedirects),
            Exit::Failure
        );
    }

    #[test]
    fn anyhow_errors_are_failures() {
        let error = CliError::from(anyhow::anyhow!("boom"));
        assert_eq!(error.exit, Exit::Failure);
        assert_eq!(error.to_string(), "boom");
    }
}

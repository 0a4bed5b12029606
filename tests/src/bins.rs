//! Locating the built `officesyncd` and `officesync` binaries in the cargo target directory.
//!
//! Test executables live in `target/<profile>/deps/`, binaries in `target/<profile>/`; the
//! profile directory is derived from [`std::env::current_exe`], with `CARGO_TARGET_DIR` as a
//! fallback. `OFFICESYNCD_BIN` and `OFFICESYNC_BIN` override the search (for installed
//! packages, say).

use std::path::{Path, PathBuf};

/// File name of the daemon binary.
pub const DAEMON: &str = "officesyncd";
/// File name of the CLI binary.
pub const CLI: &str = "officesync";

/// Path of the built `officesyncd`. Panics, telling to build it, when it is missing.
pub fn officesyncd_path() -> PathBuf {
    locate(DAEMON, "OFFICESYNCD_BIN")
}

/// Path of the built `officesync` CLI. Panics, telling to build it, when it is missing.
pub fn officesync_path() -> PathBuf {
    locate(CLI, "OFFICESYNC_BIN")
}

/// Finds binary `name`: `$override_var` if set, else next to the running executable's profile
/// directory, else in `$CARGO_TARGET_DIR/<profile>`.
fn locate(name: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} does not name a file",
            path.display()
        );
        return path;
    }
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates = candidate_dirs();
    for dir in &candidates {
        let path = dir.join(&file);
        if path.is_file() {
            return path;
        }
    }
    let looked: Vec<String> = candidates
        .iter()
        .map(|d| d.join(&file).display().to_string())
        .collect();
    panic!(
        "the {name} binary is not built (looked at: {}); run `cargo build --workspace --bins` \
         first (with the same profile as the tests), or set {override_var}",
        looked.join(", ")
    );
}

/// Directories that may hold the workspace binaries, most likely first.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut profile = None;
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = profile_dir(&exe) {
            profile = dir.file_name().map(ToOwned::to_owned);
            dirs.push(dir);
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let name = profile.unwrap_or_else(|| "debug".into());
        let dir = target.join(name);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// `target/<profile>` for an executable in `target/<profile>/deps/` (a test) or in
/// `target/<profile>/` itself (a binary such as the benchmark).
fn profile_dir(exe: &Path) -> Option<PathBuf> {
    let parent = exe.parent()?;
    if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().map(Path::to_path_buf)
    } else {
        Some(parent.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_tests_and_binaries() {
        assert_eq!(
            profile_dir(Path::new("/t/target/debug/deps/sysadmin-0123")),
            Some(PathBuf::from("/t/target/debug"))
        );
        assert_eq!(
            profile_dir(Path::new("/t/target/release/officesync-bench")),
            Some(PathBuf::from("/t/target/release"))
        );
    }
}

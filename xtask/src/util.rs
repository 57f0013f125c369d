//! What every command uses: where the checkout and its target directory are, cargo,
//! running a command, and the clippy-driver lint environment of the test build.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The checkout xtask works on: the current directory when it is a workspace root
/// (`./x` starts there), else where xtask was compiled. Not simply the latter: with
/// a target directory shared between checkouts, `target/debug/xtask` may have been
/// built from another one.
pub(crate) fn workspace_root() -> PathBuf {
    if let Ok(dir) = std::env::current_dir()
        && dir.join("xtask/Cargo.toml").is_file()
    {
        return dir;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// cargo (the one that built us, if known), started in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs `cmd` to completion; an error if it fails.
pub(crate) fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds our crates through clippy-driver with warnings denied
/// (`RUSTC_WORKSPACE_WRAPPER`, which is how `cargo clippy` runs it), in the test build
/// itself. A separate `cargo clippy` would check-build every dependency a second
/// time, including the test validator's rocksdb C++ (about 20 more minutes cold);
/// this way dependencies are built once, by rustc, and shared.
pub(crate) fn lint_env(cmd: &mut Command) -> Result<()> {
    cmd.env("RUSTC_WORKSPACE_WRAPPER", clippy_driver()?).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
    Ok(())
}

/// The clippy-driver of the toolchain cargo runs with.
fn clippy_driver() -> Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "clippy-driver"])
        .current_dir(workspace_root())
        .output()
        .context("running rustup which clippy-driver (./x installs clippy)")?;
    if !out.status.success() {
        bail!(
            "clippy-driver not found: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// clap value parser: a count that must be positive (`--txs`, `--pairs`, `--raw`).
pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be positive".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

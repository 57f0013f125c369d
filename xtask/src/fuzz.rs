//! `fuzz [--runs N]`: runs the gateway's request-decoding fuzz target
//! (`tpu-gateway/fuzz`, cargo-fuzz on nightly) from the checked-in seeds, and prints
//! libFuzzer's own count.

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{run, workspace_root};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Executions to run.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    runs: u64,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        let dir = workspace_root().join("tpu-gateway/fuzz");
        std::fs::create_dir_all(dir.join("corpus/rpc_request"))?;
        let mut cmd = Command::new("rustup");
        cmd.current_dir(&dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "rpc_request",
                "-O",
            ])
            .arg("corpus/rpc_request")
            .arg("seeds")
            .arg("--")
            .arg(format!("-runs={}", self.runs))
            .arg("-max_len=65536");
        run(cmd).context("cargo fuzz (./x installs cargo-fuzz and nightly's rust-src)")
    }
}

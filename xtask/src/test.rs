//! `test [cargo test args]`: what CI runs. The XDP object check, formatting, then
//! every test, built with clippy-driver denying warnings on all our crates and
//! targets ([`lint_env`]). Extra arguments go to `cargo test` verbatim (after `--`:
//! to the test binaries).

use std::ffi::OsString;

use anyhow::Result;

use crate::{
    ebpf::ebpf,
    util::{cargo, lint_env, run},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Passed on to `cargo test` (`-p tpu-gateway`, `-- --nocapture`).
    #[arg(
        value_name = "CARGO_TEST_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub(crate) extra: Vec<OsString>,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        ebpf(true)?;
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        run(fmt)?;
        let mut build = cargo();
        build.args(["test", "--workspace", "--all-targets", "--no-run"]);
        lint_env(&mut build)?;
        run(build)?;
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--all-targets"])
            .args(self.extra);
        lint_env(&mut cmd)?;
        run(cmd)
    }
}

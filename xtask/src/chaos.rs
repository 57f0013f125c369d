//! `chaos [--secs N]`: the gateway's fault suite (`tpu-gateway/tests/chaos.rs`) at a
//! length of your choosing, with its figures printed. The test command runs the
//! same tests at their short length.

use anyhow::Result;

use crate::util::{cargo, lint_env, run};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds of traffic per scenario (the test command uses 18).
    #[arg(long, value_name = "N", default_value_t = 120)]
    secs: u64,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        run_scenarios(None, &[("AB_CHAOS_SECS", self.secs.to_string())])
    }
}

/// Runs the chaos test binary's scenarios (those matching `filter`), printing their
/// figures, with `env` set; built with the test command's flags, so its build is
/// shared.
pub(crate) fn run_scenarios(filter: Option<&str>, env: &[(&str, String)]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--test", "chaos"]);
    cmd.args(filter).args(["--", "--nocapture"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    lint_env(&mut cmd)?;
    run(cmd)
}

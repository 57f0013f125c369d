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
        let mut cmd = cargo();
        // The same flags as `test`, so the build is shared with it.
        cmd.args([
            "test",
            "--workspace",
            "--test",
            "chaos",
            "--",
            "--nocapture",
        ])
        .env("AB_CHAOS_SECS", self.secs.to_string());
        lint_env(&mut cmd)?;
        run(cmd)
    }
}

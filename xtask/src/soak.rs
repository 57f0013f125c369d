//! `soak [--secs N] [--rate R]`: the gateway's soak scenario
//! (`tpu-gateway/tests/chaos.rs`, `soak_…`) with the release binary, for 10 minutes
//! by default, printing its samples (memory, descriptors, tracked transactions
//! every 5 s). `--rate` should be about 80% of what the gateway sustains here
//! (`./x bench-gateway` measures it); the test command runs the same scenario for
//! 60 s at 300/s with the debug build.

use anyhow::Result;

use crate::util::{cargo, run, target_dir};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds of load.
    #[arg(long, value_name = "N", default_value_t = 600)]
    secs: u64,
    /// Transactions per second offered.
    #[arg(long, value_name = "R", default_value_t = 1000)]
    rate: u64,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        let mut build = cargo();
        build.args(["build", "--release", "--bin", "tpu-gateway"]);
        run(build)?;
        let bin = target_dir().join("release/tpu-gateway");
        crate::chaos::run_scenarios(
            Some("soak"),
            &[
                ("AB_SOAK_SECS", self.secs.to_string()),
                ("AB_SOAK_RATE", self.rate.to_string()),
                ("AB_SOAK_BIN", bin.display().to_string()),
            ],
        )
    }
}

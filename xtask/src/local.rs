//! `run`, `local <args>`: local mode, `afterburner-local <args>` (`run` is
//! `local run`). Built by the same command, features and environment as `test` (a
//! tested tree starts at once, and the validator is not rebuilt with another feature
//! set); it runs the `tpu-gateway` binary built beside it. The arguments go to
//! `afterburner-local` verbatim, `--help` included.

use std::{ffi::OsString, process::Command};

use anyhow::Result;

use crate::util::{cargo, lint_env, run, target_dir};

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Local {
    /// `afterburner-local`'s command and its arguments (`run`, `send [--print]`, `--help`).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub(crate) args: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Run {
    /// Arguments of `afterburner-local run` (`--help` lists them).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub(crate) args: Vec<OsString>,
}

impl Local {
    pub(crate) fn run(self) -> Result<()> {
        local(self.args)
    }
}

impl Run {
    pub(crate) fn run(self) -> Result<()> {
        local(std::iter::once("run".into()).chain(self.args))
    }
}

fn local(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let mut build = cargo();
    build.args([
        "test",
        "--workspace",
        "--all-targets",
        "--no-run",
        "--quiet",
    ]);
    lint_env(&mut build)?;
    run(build)?;
    let mut cmd = Command::new(target_dir().join("debug/afterburner-local"));
    cmd.args(args);
    run(cmd)
}

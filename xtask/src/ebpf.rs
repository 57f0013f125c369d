//! `ebpf [--check]`: builds `afterburner-ebpf` (nightly, `-Z build-std=core`,
//! bpf-linker) and installs the object at [`EBPF_OBJECT`]; with `--check`, compares
//! instead and fails on a difference (CI: the checked-in object is what the source
//! builds to).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{run, target_dir, workspace_root};

/// The checked-in XDP object, relative to the workspace root.
const EBPF_OBJECT: &str = "afterburner-xdp/bpf/afterburner_xdp.o";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only check: fail if the checked-in object differs from what the source builds to.
    #[arg(long)]
    check: bool,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        ebpf(self.check)
    }
}

/// Builds the XDP object; installs it, or with `check` compares it with the
/// checked-in one.
pub(crate) fn ebpf(check: bool) -> Result<()> {
    let target = target_dir().join("ebpf");
    // Nightly through rustup (the workspace's rust-toolchain.toml names stable, and
    // the environment cargo gave us points at it).
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root().join("afterburner-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .args(["run", "nightly", "cargo"])
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--locked",
            "--target-dir",
        ])
        .arg(&target);
    run(cmd).context(
        "building the XDP program needs nightly with rust-src and bpf-linker (./x installs them)",
    )?;
    let built = target.join("bpfel-unknown-none/release/afterburner_xdp");
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let installed = workspace_root().join(EBPF_OBJECT);
    if check {
        let current = std::fs::read(&installed)
            .with_context(|| format!("reading {}", installed.display()))?;
        if current != fresh {
            bail!(
                "{EBPF_OBJECT} does not match afterburner-ebpf's source ({} bytes checked in, {} built): \
                 run `cargo xtask ebpf` and commit the object",
                current.len(),
                fresh.len()
            );
        }
        println!("{EBPF_OBJECT}: matches the source ({} bytes)", fresh.len());
    } else {
        std::fs::write(&installed, &fresh)?;
        println!("wrote {EBPF_OBJECT} ({} bytes)", fresh.len());
    }
    Ok(())
}

//! Afterburner's build automation (`./x <command>`, or `cargo xtask <command>`).
//! One module per command:
//!
//! - `run [args]`, `local <args>` ([`local`]): local mode (`afterburner-local`): a
//!   local validator and the `tpu-gateway` binary in front of it; `local send
//!   [--print]` posts a transfer (or prints it, base64, for curl). The arguments go to
//!   `afterburner-local` verbatim; `run` is `local run`.
//! - `bench [--txs N] [--pairs P]` ([`bench`]): the TPU client benchmark. agave's TPU
//!   QUIC server runs in one process; our engine (kernel UDP) and agave's
//!   `tpu-client-next` run in turn, each in its own process, sending the same
//!   pre-signed transactions. Prints delivered tx/s and client CPU µs per delivered
//!   transaction for each run, the medians, and the ratios (ours / theirs, median
//!   over the pairs).
//! - `bench-xdp [--txs N] [--pairs P] [--raw N] [--no-rps]` ([`bench_xdp`], root): raw
//!   AF_XDP vs our engine over AF_XDP vs over kernel UDP vs `tpu-client-next`, on a
//!   veth pair between two network namespaces.
//! - `bench-gateway [--rounds N] [--baseline REV]` ([`bench_gateway`]): the gateway's ingress vs an
//!   axum no-op (wrk), and its latency.
//! - `ebpf [--check]` ([`ebpf`]): rebuild the checked-in XDP object (nightly +
//!   bpf-linker); `--check`: fail if it differs from what the source builds to.
//! - `netns up [--queues N]`, `netns down` ([`netns_cmd`]): the test topology, two
//!   namespaces and a veth pair, left in place / removed.
//! - `chaos [--secs N]` ([`chaos`]): the gateway's fault suite, longer, with figures.
//! - `soak [--secs N] [--rate R]` ([`soak`]): the soak scenario with the release
//!   binary (10 minutes by default).
//! - `fuzz [--runs N]` ([`fuzz`]): fuzz the gateway's request decoding (cargo-fuzz,
//!   nightly).
//! - `test [cargo test args]` ([`test`]): the XDP object check, `cargo fmt --check`,
//!   then every test, built with clippy-driver denying warnings on all our crates and
//!   targets (what CI runs).
//!
//! [`util`] holds what they share: the workspace root, cargo, the lint environment.

use std::ffi::OsString;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bench_gateway;
mod bench_xdp;
mod chaos;
mod ebpf;
mod fuzz;
mod local;
mod netns_cmd;
mod soak;
mod test;
mod util;

/// Afterburner's build automation: benchmarks, test topologies, the eBPF object, CI.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "./x")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Local mode: a local validator and the gateway in front of it (Ctrl-C stops).
    ///
    /// `afterburner-local run [args]`, built first like `test` builds it; the
    /// arguments go to it verbatim, `--help` included. See the README.
    Run(local::Run),
    /// `afterburner-local <args>`: `send [--print]` posts a transfer through the local
    /// gateway.
    ///
    /// Built first like `test` builds it; the arguments go to `afterburner-local`
    /// verbatim, `--help` included. `send` waits until the transfer lands; `--print`
    /// only prints it, base64, for curl.
    Local(local::Local),
    /// Our engine vs tpu-client-next against agave's TPU server.
    Bench(bench::Args),
    /// Raw AF_XDP vs engine over AF_XDP vs engine over UDP vs tpu-client-next, on a
    /// veth pair (root).
    BenchXdp(bench_xdp::Args),
    /// Gateway ingress vs an axum no-op (wrk), and latency.
    BenchGateway(bench_gateway::Args),
    /// Rebuild the XDP object (nightly + bpf-linker).
    Ebpf(ebpf::Args),
    /// The test topology: two namespaces and a veth pair.
    #[command(subcommand)]
    Netns(netns_cmd::Netns),
    /// The gateway's fault suite (leader churn, ...), longer, with its figures.
    Chaos(chaos::Args),
    /// The release gateway under steady load for 10 minutes: memory, descriptors.
    Soak(soak::Args),
    /// Fuzz the gateway's request decoding (cargo-fuzz, nightly).
    Fuzz(fuzz::Args),
    /// Every check and test: what CI runs.
    ///
    /// The XDP object check (`ebpf --check`), `cargo fmt --check`, then every test,
    /// built with clippy-driver denying warnings on all our crates and targets.
    Test(test::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse_from(keep_escape(std::env::args_os().collect()));
    match cli.command {
        Cmd::Run(args) => args.run(),
        Cmd::Local(args) => args.run(),
        Cmd::Bench(args) => args.run(),
        Cmd::BenchXdp(args) => args.run(),
        Cmd::BenchGateway(args) => args.run(),
        Cmd::Ebpf(args) => args.run(),
        Cmd::Netns(cmd) => cmd.run(),
        Cmd::Chaos(args) => args.run(),
        Cmd::Soak(args) => args.run(),
        Cmd::Fuzz(args) => args.run(),
        Cmd::Test(args) => args.run(),
    }
}

/// `run`, `local` and `test` pass their arguments on verbatim, `--` included
/// (`./x test -- --nocapture`: cargo test needs it). clap takes a `--` right after
/// the command name as the end of the options and drops it: doubled there, the
/// second one is kept.
fn keep_escape(mut args: Vec<OsString>) -> Vec<OsString> {
    let verbatim = args
        .get(1)
        .is_some_and(|c| c == "run" || c == "local" || c == "test");
    if verbatim && args.get(2).is_some_and(|a| a == "--") {
        args.insert(2, "--".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let args = args.iter().map(OsString::from).collect();
        Cli::try_parse_from(keep_escape(args))
    }

    fn verbatim(cmd: Cmd) -> Vec<OsString> {
        match cmd {
            Cmd::Run(a) => a.args,
            Cmd::Local(a) => a.args,
            Cmd::Test(a) => a.extra,
            other => panic!("not a verbatim command: {other:?}"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn verbatim_arguments() -> Result<()> {
        for (args, expected) in [
            (
                &["x", "local", "send", "--print"][..],
                &["send", "--print"][..],
            ),
            (&["x", "local", "--help"], &["--help"]),
            (&["x", "local", "--", "send"], &["--", "send"]),
            (
                &["x", "run", "--listen", "0.0.0.0:8899"],
                &["--listen", "0.0.0.0:8899"],
            ),
            (&["x", "test"], &[]),
            (&["x", "test", "--", "--nocapture"], &["--", "--nocapture"]),
            (
                &["x", "test", "-p", "tpu-gateway", "--", "--nocapture"],
                &["-p", "tpu-gateway", "--", "--nocapture"],
            ),
            (&["x", "test", "--release"], &["--release"]),
        ] {
            let got = verbatim(parse(args)?.command);
            assert_eq!(got, expected, "{args:?}");
        }
        Ok(())
    }

    #[test]
    fn defaults_and_errors() -> Result<()> {
        let Cmd::Netns(netns_cmd::Netns::Up { queues }) = parse(&["x", "netns", "up"])?.command
        else {
            panic!("netns up");
        };
        assert_eq!(queues, 1);
        for bad in [
            &["x"][..],
            &["x", "nope"],
            &["x", "bench", "--txs", "0"],
            &["x", "bench", "--txs"],
            &["x", "bench", "--frobnicate"],
            &["x", "bench-xdp", "--raw", "x"],
            &["x", "netns"],
            &["x", "ebpf", "--check", "extra"],
            &["x", "fuzz", "--runs", "-1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        Ok(())
    }
}

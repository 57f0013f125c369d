//! `netns up [--queues N]`: creates the test topology (two network namespaces and a
//! veth pair, `afterburner_test_support::netns`) and leaves it in place;
//! `netns down`: removes every topology namespace of this tool.

use afterburner_test_support::netns;
use anyhow::Result;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Netns {
    /// Create the topology and leave it in place (root).
    Up {
        /// RX/TX queues on each veth end.
        #[arg(long, value_name = "N", default_value_t = 1)]
        queues: u32,
    },
    /// Remove every topology namespace of this tool.
    Down,
}

impl Netns {
    pub(crate) fn run(self) -> Result<()> {
        match self {
            Self::Up { queues } => up(queues),
            Self::Down => down(),
        }
    }
}

fn up(queues: u32) -> Result<()> {
    let topo = netns::Topology::create(queues)?;
    println!(
        "{} ({} {}) <-> {} ({} {})",
        topo.server_ns,
        netns::SERVER_IF,
        netns::SERVER_IP,
        topo.client_ns,
        netns::CLIENT_IF,
        netns::CLIENT_IP
    );
    println!(
        "run inside with: ip netns exec {} <command>",
        topo.client_ns
    );
    // Left in place on purpose; `cargo xtask netns down` removes it.
    std::mem::forget(topo);
    Ok(())
}

fn down() -> Result<()> {
    let list = netns::ip(&["netns", "list"])?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(netns::PREFIX) {
            netns::ip(&["netns", "del", name])?;
            println!("removed {name}");
        }
    }
    Ok(())
}

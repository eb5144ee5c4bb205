//! `uroce devinfo`: what `ibv_devinfo -v` would show for an rxe device on the same network
//! interface, so users know which GID index to give rdma-core's tools on the other side.
//!
//! uroce has no device list of its own: any local IP address can be opened as a device. Each
//! network interface is shown as one device, `uroce0`, `uroce1`, … in interface-index order,
//! with rxe's port attributes for it:
//!
//! - state PORT_ACTIVE (4) when the interface is up and running, else PORT_DOWN (1);
//! - max_mtu 4096, active_mtu what rxe derives from the link MTU (`rxe_set_mtu`: link MTU
//!   less 80 bytes of headers, rounded down to an IB MTU); LIDs 0; link layer Ethernet;
//! - the GID table in rxe's order (RoCE v2 only): index 0 the default GID, fe80::/64 with the
//!   MAC's EUI-64, then the IPv4 addresses as ::ffff:a.b.c.d, then the IPv6 addresses, as
//!   the kernel lists them (rxe numbers them when they appear, so a table whose addresses
//!   changed since the rxe device was created may differ). Link-local GIDs, index 0
//!   included, are listed but marked unusable: uroce binds a UDP socket to one address and
//!   cannot use link-local ones. The node GUID is the MAC's EUI-64, as rxe's.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;

use super::netif::{self, Interface};
use super::CliError;

/// Options of `uroce devinfo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show only the device for this local address (the interface holding it).
    #[arg(long)]
    pub dev_ip: Option<IpAddr>,
}

fn port_state(i: &Interface) -> (&'static str, u32) {
    if i.active() {
        ("PORT_ACTIVE", 4)
    } else {
        ("PORT_DOWN", 1)
    }
}

fn guid_str(g: [u8; 8]) -> String {
    g.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The GID table rxe would build for `i`, in its order, with notes.
fn gid_table(i: &Interface) -> Vec<(std::net::Ipv6Addr, bool)> {
    let mut gids = Vec::new();
    let is_ll = |g: &std::net::Ipv6Addr| g.segments()[0] & 0xffc0 == 0xfe80;
    if let Some(mac) = i.mac {
        gids.push(netif::default_gid(mac));
    }
    for &(a, _) in &i.addrs {
        if let IpAddr::V4(v4) = a {
            gids.push(v4.to_ipv6_mapped());
        }
    }
    for &(a, _) in &i.addrs {
        if let IpAddr::V6(v6) = a {
            if !gids.contains(&v6) {
                gids.push(v6);
            }
        }
    }
    gids.into_iter().map(|g| (g, !is_ll(&g))).collect()
}

fn show(
    out: &mut dyn Write,
    n: usize,
    i: &Interface,
    dev_ip: Option<IpAddr>,
) -> std::io::Result<()> {
    let guid = guid_str(i.mac.map_or([0; 8], netif::eui64));
    let link = i.link_mtu();
    let active = link.map_or(1024, netif::rxe_active_mtu);
    let (state, code) = port_state(i);
    writeln!(out, "hca_id:\turoce{n}")?;
    writeln!(out, "\ttransport:\t\t\tInfiniBand (0)")?;
    writeln!(out, "\tnode_guid:\t\t\t{guid}")?;
    writeln!(out, "\tsys_image_guid:\t\t\t{guid}")?;
    writeln!(out, "\tphys_port_cnt:\t\t\t1")?;
    writeln!(
        out,
        "\tnetdev:\t\t\t\t{} (link MTU {})",
        i.name,
        link.map_or_else(|| "unknown".to_string(), |m| m.to_string())
    )?;
    writeln!(out, "\t\tport:\t1")?;
    writeln!(out, "\t\t\tstate:\t\t\t{state} ({code})")?;
    writeln!(out, "\t\t\tmax_mtu:\t\t4096 (5)")?;
    writeln!(
        out,
        "\t\t\tactive_mtu:\t\t{active} ({})",
        netif::mtu_enum(active)
    )?;
    writeln!(out, "\t\t\tsm_lid:\t\t\t0")?;
    writeln!(out, "\t\t\tport_lid:\t\t0")?;
    writeln!(out, "\t\t\tport_lmc:\t\t0x00")?;
    writeln!(out, "\t\t\tlink_layer:\t\tEthernet")?;
    let want = dev_ip.map(netif::gid_of);
    let table = gid_table(i);
    for (idx, (g, usable)) in table.iter().enumerate() {
        // ibv_devinfo skips GIDs whose interface ID is zero.
        if g.octets()[8..].iter().all(|&b| b == 0) {
            continue;
        }
        let note = if !usable {
            " (link-local: not usable by uroce)"
        } else if Some(*g) == want {
            " (this uroce device)"
        } else {
            ""
        };
        writeln!(out, "\t\t\tGID[{idx:3}]:\t\t{g}, RoCE v2{note}")?;
    }
    if let (Some(ip), Some(g)) = (dev_ip, want) {
        if !table.iter().any(|(t, _)| *t == g) {
            writeln!(
                out,
                "\t\t\turoce GID:\t\t{g} ({ip} is reached through {}; rxe has no GID for it)",
                i.name
            )?;
        }
    }
    writeln!(out)
}

/// Runs `uroce devinfo`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let list = netif::interfaces()
        .map_err(|e| CliError::Failed(format!("listing network interfaces: {e}")))?;
    match args.dev_ip {
        Some(ip) => {
            let ip = netif::canonical(ip);
            let i = netif::interface_of(&list, ip)
                .ok_or_else(|| CliError::Failed(format!("no network interface holds {ip}")))?;
            let n = list.iter().position(|x| x.name == i.name).unwrap_or(0);
            show(out, n, i, Some(ip))?;
        }
        None => {
            for (n, i) in list.iter().enumerate() {
                show(out, n, i, None)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! What the subcommands need to know about this host's network interfaces: their addresses,
//! MAC, state and link MTU, and the port attributes rxe would derive from them.

use std::net::{IpAddr, Ipv6Addr};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// One network interface and its addresses.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Kernel name (`eth0`).
    pub name: String,
    /// Interface index (0 if unknown).
    pub index: u32,
    /// `IFF_*` flags.
    pub flags: InterfaceFlags,
    /// Hardware address, if it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Addresses with their prefix length, in the order the kernel lists them.
    pub addrs: Vec<(IpAddr, u8)>,
}

impl Interface {
    /// Whether `ip` is one of the addresses or inside one of the prefixes.
    fn holds(&self, ip: IpAddr, exact: bool) -> bool {
        self.addrs.iter().any(|&(a, prefix)| {
            if exact {
                a == ip
            } else {
                same_prefix(a, ip, prefix)
            }
        })
    }

    /// Whether the link can carry traffic (`IFF_UP` and `IFF_RUNNING`): rxe's port is ACTIVE
    /// when the netdev is running with carrier.
    pub fn active(&self) -> bool {
        self.flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING)
    }

    /// The link MTU: `/sys/class/net/NAME/mtu`, else `ip -o link show dev NAME`.
    pub fn link_mtu(&self) -> Option<u32> {
        if let Ok(s) = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", self.name)) {
            if let Ok(v) = s.trim().parse() {
                return Some(v);
            }
        }
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show", "dev", &self.name])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "mtu" {
                return words.next()?.parse().ok();
            }
        }
        None
    }
}

fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Counts the leading one bits of a netmask.
fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones() as u8,
        IpAddr::V6(m) => u128::from(m).leading_ones() as u8,
    }
}

/// Every interface, in interface-index order.
pub fn interfaces() -> std::io::Result<Vec<Interface>> {
    let mut list: Vec<Interface> = Vec::new();
    for ifa in getifaddrs().map_err(std::io::Error::from)? {
        // IPv4 aliases come labelled `eth0:1`; rxe counts their addresses as eth0's.
        let name = ifa.interface_name.split(':').next().unwrap_or_default();
        let i = match list.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                let index = nix::net::if_::if_nametoindex(name).unwrap_or(0);
                list.push(Interface {
                    name: name.to_string(),
                    index,
                    flags: ifa.flags,
                    mac: None,
                    addrs: Vec::new(),
                });
                list.len() - 1
            }
        };
        let Some(addr) = ifa.address else { continue };
        let mask = ifa.netmask;
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            Some(IpAddr::V4(v4.ip()))
        } else {
            addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        };
        match ip {
            Some(ip) => {
                let m = mask.and_then(|m| {
                    m.as_sockaddr_in()
                        .map(|v| IpAddr::V4(v.ip()))
                        .or_else(|| m.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())))
                });
                let full = if ip.is_ipv4() { 32 } else { 128 };
                list[i].addrs.push((ip, m.map_or(full, prefix_len)));
            }
            None => {
                if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
                    list[i].mac = Some(mac);
                }
            }
        }
    }
    list.sort_by_key(|i| i.index);
    Ok(list)
}

/// The interface holding `ip`: the one with that exact address, else the one whose prefix
/// contains it (127.0.5.2 is on `lo` through 127.0.0.0/8).
pub fn interface_of(list: &[Interface], ip: IpAddr) -> Option<&Interface> {
    list.iter()
        .find(|i| i.holds(ip, true))
        .or_else(|| list.iter().find(|i| i.holds(ip, false)))
}

/// What rxe makes of a link MTU (`rxe_set_mtu`): the link MTU less `RXE_MAX_HDR_LENGTH` (80
/// bytes of headers), rounded down to an IB MTU, at least 256 and at most 4096.
pub fn rxe_active_mtu(link_mtu: u32) -> u32 {
    let m = link_mtu.saturating_sub(80);
    [4096, 2048, 1024, 512, 256]
        .into_iter()
        .find(|&v| m >= v)
        .unwrap_or(256)
}

/// The `ibv_mtu` enum value of an MTU in bytes (256 → 1 … 4096 → 5).
pub fn mtu_enum(bytes: u32) -> u32 {
    match bytes {
        256 => 1,
        512 => 2,
        1024 => 3,
        2048 => 4,
        4096 => 5,
        _ => 0,
    }
}

/// The modified EUI-64 of a MAC (`addrconf_ifid_eui48`): rxe's node GUID and the interface ID
/// of its default GID.
pub fn eui64(mac: [u8; 6]) -> [u8; 8] {
    [
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// rxe's GID index 0, the default GID: fe80::/64 with the MAC's EUI-64.
pub fn default_gid(mac: [u8; 6]) -> Ipv6Addr {
    let mut g = [0u8; 16];
    g[0] = 0xfe;
    g[1] = 0x80;
    g[8..].copy_from_slice(&eui64(mac));
    Ipv6Addr::from(g)
}

/// A GID as the IP address uroce uses for it: the IPv4-mapped form (::ffff:a.b.c.d) is the
/// IPv4 address, anything else the IPv6 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The GID of an address: IPv4 as ::ffff:a.b.c.d, IPv6 as itself.
pub fn gid_of(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_mtu_as_rxe() {
        assert_eq!(rxe_active_mtu(1500), 1024);
        assert_eq!(rxe_active_mtu(9000), 4096);
        assert_eq!(rxe_active_mtu(4176), 4096);
        assert_eq!(rxe_active_mtu(4175), 2048);
        assert_eq!(rxe_active_mtu(65536), 4096);
        assert_eq!(rxe_active_mtu(300), 256);
    }

    #[test]
    fn default_gid_from_mac() {
        let g = default_gid([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(g.to_string(), "fe80::5054:ff:fe12:3456");
    }

    #[test]
    fn prefixes() {
        let lo = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_prefix(lo("127.0.0.1"), lo("127.9.8.7"), 8));
        assert!(!same_prefix(lo("10.0.0.1"), lo("10.0.1.1"), 24));
        assert!(same_prefix(lo("fd66:1::1"), lo("fd66:1::2"), 64));
        assert_eq!(prefix_len(lo("255.255.255.0")), 24);
        assert_eq!(canonical(lo("::ffff:10.1.2.3")), lo("10.1.2.3"));
        assert_eq!(gid_of(lo("10.1.2.3")).to_string(), "::ffff:10.1.2.3");
    }
}

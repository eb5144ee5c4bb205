//! Which uroce devices exist: `UROCE_DEVICES="uroce0=192.0.2.1,uroce1=2001:db8::1"` names each
//! device and the local address its UDP socket binds (default `uroce0=127.0.0.1`). Everything
//! `ibv_query_*` reports about a device is derived here, as rxe derives it from its netdev.

use std::net::{IpAddr, Ipv6Addr};

use uroce::netif;

/// One configured device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `ibv_get_device_name`.
    pub name: String,
    /// The address the device binds and sends from.
    pub ip: IpAddr,
    /// Node GUID (EUI-64 of the interface's MAC as rxe, or derived from the address when the
    /// interface has no MAC, as loopback).
    pub guid: [u8; 8],
    /// GID table in rxe's layout: index 0 the link-local default GID, index 1 the address
    /// (IPv4-mapped for IPv4), so `-g 1` / `-x 1` select it as on rxe.
    pub gids: Vec<Ipv6Addr>,
    /// Link MTU of the interface holding the address (65536 if unknown, as loopback).
    pub link_mtu: u32,
    /// Active path MTU: rxe's rule (link MTU less headers, rounded down to an IB MTU).
    pub active_mtu: u32,
    /// Whether the interface is up and running (port ACTIVE) or not (port DOWN).
    pub active: bool,
}

/// Parses `UROCE_DEVICES`; malformed entries are skipped (a C caller gets no panics).
pub fn parse(spec: &str) -> Vec<(String, IpAddr)> {
    spec.split(',')
        .filter_map(|e| {
            let (name, ip) = e.trim().split_once('=')?;
            let ip: IpAddr = ip.trim().parse().ok()?;
            let name = name.trim();
            (!name.is_empty() && name.len() < 64).then(|| (name.to_string(), ip))
        })
        .collect()
}

/// The devices of this process, from the environment.
pub fn devices() -> Vec<DeviceInfo> {
    let spec = std::env::var("UROCE_DEVICES").unwrap_or_else(|_| "uroce0=127.0.0.1".into());
    let ifs = netif::interfaces().unwrap_or_default();
    parse(&spec)
        .into_iter()
        .map(|(name, ip)| describe(name, netif::canonical(ip), netif::interface_of(&ifs, ip)))
        .collect()
}

/// What a device bound to `ip` on interface `iface` reports.
pub fn describe(name: String, ip: IpAddr, iface: Option<&netif::Interface>) -> DeviceInfo {
    let guid = match iface.and_then(|i| i.mac).filter(|m| *m != [0; 6]) {
        Some(mac) => netif::eui64(mac),
        None => guid_from_ip(ip),
    };
    let link_mtu = iface.and_then(|i| i.link_mtu()).unwrap_or(65536);
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[8..].copy_from_slice(&guid);
    DeviceInfo {
        name,
        ip,
        guid,
        gids: vec![Ipv6Addr::from(ll), netif::gid_of(ip)],
        link_mtu,
        active_mtu: netif::rxe_active_mtu(link_mtu),
        active: iface.is_none_or(|i| i.active()),
    }
}

/// A locally administered EUI-64 made from the address, unique per address on the host.
fn guid_from_ip(ip: IpAddr) -> [u8; 8] {
    let o = netif::gid_of(ip).octets();
    [
        0x02,
        0x00,
        o[10] ^ o[8],
        o[11] ^ o[9],
        o[12],
        o[13],
        o[14],
        o[15],
    ]
}

/// The address a GID names: IPv4-mapped GIDs are IPv4 (as rxe's `rdma_gid2ip`).
pub fn gid_to_ip(gid: [u8; 16]) -> IpAddr {
    netif::canonical(IpAddr::V6(Ipv6Addr::from(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_skips_garbage() {
        let d = parse("uroce0=127.0.0.1, x=nope,=1.2.3.4,uroce1=::1");
        assert_eq!(
            d,
            vec![
                ("uroce0".to_string(), "127.0.0.1".parse().unwrap()),
                ("uroce1".to_string(), "::1".parse().unwrap())
            ]
        );
    }

    #[test]
    fn gid_table_as_rxe() {
        let d = describe("u".into(), "10.1.2.3".parse().unwrap(), None);
        assert_eq!(d.gids[1], "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(d.gids[0].segments()[0], 0xfe80);
        assert_eq!(d.active_mtu, 4096);
        assert_eq!(gid_to_ip(d.gids[1].octets()), d.ip);
    }
}

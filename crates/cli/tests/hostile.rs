//! Hostile peer tests (issue 8; the table in `docs/SECURITY.md` names them).
//!
//! An attacker crafts raw RoCEv2 packets with valid ICRCs (uroce-wire's `PacketRepr::emit` and
//! `IcrcContext::seal`) and sends them over a real UDP socket (port 4791) from one network
//! namespace to a victim uroce device in another (`scripts/netns.sh`, IPv6, whose ICRC has no
//! unknown IP Identification). The victim has RC, UC and UD QPs facing the attacker, memory
//! regions with different rights, guard regions filled with known patterns, and an RC QP to a
//! legitimate peer device. Each test asserts the documented reaction (the NAK code in the AETH
//! the attacker receives, the counted drop, or the QP in error), that every victim region is
//! byte-identical afterwards unless the case allows a write, and that a legitimate RC WRITE,
//! READ and SEND on the other QP still complete with correct data.
//!
//! Needs root; without it every test prints that it was skipped and returns.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{need_root, Netns};
use nix::sched::CloneFlags;
use uroce::{
    Access, CompletionQueue, Connect, Device, DeviceConfig, DeviceCounters, MemoryRegion, Mtu,
    Payload, QpCap, QpState, QpType, QueuePair, RecvWr, SendOp, SendWr, WcOpcode, WcStatus,
};
use uroce_wire::{
    AckSyndrome, AtomicEthRepr, BthRepr, DethRepr, IcrcCheck, IcrcContext, Ipv4IdMode, NakCode,
    Opcode, PacketRepr, Psn, RethRepr, ROCE_UDP_PORT,
};

/// Subnet number for `scripts/netns.sh` (fd66:186::/64); namespaces `ho-victim-{a,b}`.
const NET: u8 = 186;
/// The attacker's QPN, which the victim's RC and UC QPs are connected to.
const ATK_RC_QPN: u32 = 0xA77;
const ATK_UC_QPN: u32 = 0xA78;
/// PSNs the victim expects from the attacker on RC and UC, and its own first send PSN.
const RC_EPSN: u32 = 0x1000;
const UC_EPSN: u32 = 0x2000;
const VICTIM_SQ_PSN: u32 = 0x9000;
/// The victim UD QP's Q_Key.
const QKEY: u32 = 0x1111_2222;
/// Path MTU of the QPs facing the attacker.
const MTU: usize = 1024;
const DEADLINE: Duration = Duration::from_secs(10);

fn addr(host: u8) -> Ipv6Addr {
    format!("fd66:{NET}::{host}").parse().unwrap()
}
fn peer_ip() -> Ipv6Addr {
    addr(1)
}
fn victim_ip() -> Ipv6Addr {
    addr(2)
}
fn attacker_ip() -> Ipv6Addr {
    addr(3)
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets (and the progress
/// threads of devices) it creates live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Polls `cond` until it holds or the deadline passes.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(tag))
        .collect()
}

/// The device-level drop counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Drops {
    icrc: u64,
    malformed: u64,
    unknown_qp: u64,
    bad_pkey: u64,
    wrong_qp: u64,
    wrong_source: u64,
}

impl Drops {
    fn of(c: &DeviceCounters) -> Drops {
        Drops {
            icrc: c.icrc_drops,
            malformed: c.malformed,
            unknown_qp: c.unknown_qp,
            bad_pkey: c.bad_pkey,
            wrong_qp: c.wrong_qp,
            wrong_source: c.wrong_source,
        }
    }
    fn minus(self, o: Drops) -> Drops {
        Drops {
            icrc: self.icrc - o.icrc,
            malformed: self.malformed - o.malformed,
            unknown_qp: self.unknown_qp - o.unknown_qp,
            bad_pkey: self.bad_pkey - o.bad_pkey,
            wrong_qp: self.wrong_qp - o.wrong_qp,
            wrong_source: self.wrong_source - o.wrong_source,
        }
    }
}

/// The victim device and everything on it.
struct Victim {
    dev: Device,
    /// Every region, by name, for before/after snapshots.
    regions: Vec<(&'static str, MemoryRegion)>,
    /// The key of a region that was deregistered; `fresh` now covers its addresses.
    stale_rkey: u32,
    rc: QueuePair,
    rc_cq: CompletionQueue,
    uc: QueuePair,
    uc_cq: CompletionQueue,
    ud: QueuePair,
    ud_cq: CompletionQueue,
    legit: QueuePair,
    legit_cq: CompletionQueue,
}

impl Victim {
    fn mr(&self, name: &str) -> &MemoryRegion {
        &self
            .regions
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no region {name}"))
            .1
    }

    fn snapshot(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.regions.iter().map(|(n, m)| (*n, m.to_vec())).collect()
    }

    fn drops(&self) -> Drops {
        Drops::of(&self.dev.counters())
    }

    /// Every completion now in `cq`.
    fn drain(cq: &CompletionQueue) -> Vec<uroce::Completion> {
        cq.poll(64).expect("poll CQ")
    }
}

/// The legitimate peer: one RC QP connected to the victim's `legit` QP.
struct Peer {
    _dev: Device,
    mr: MemoryRegion,
    qp: QueuePair,
    cq: CompletionQueue,
}

/// The attacker's socket on [fd66:N::3]:4791.
struct Attacker {
    sock: UdpSocket,
}

impl Attacker {
    fn icrc_to_victim() -> IcrcContext {
        IcrcContext::v6(attacker_ip(), victim_ip(), ROCE_UDP_PORT, ROCE_UDP_PORT)
    }

    /// Headers of `repr`, then `payload`, then a valid ICRC.
    fn build(repr: &PacketRepr, payload: &[u8]) -> Vec<u8> {
        let mut r = *repr;
        r.payload_len = payload.len();
        let mut buf = vec![0u8; r.buffer_len()];
        let mut p = r.emit(&mut buf).expect("emit");
        p.payload_mut().copy_from_slice(payload);
        Self::icrc_to_victim().seal(&mut buf);
        buf
    }

    /// Re-seals bytes after a raw edit, so only the edit is wrong.
    fn reseal(bytes: &mut [u8]) {
        Self::icrc_to_victim().seal(bytes);
    }

    fn send_raw(&self, bytes: &[u8]) {
        let to = SocketAddr::new(IpAddr::V6(victim_ip()), ROCE_UDP_PORT);
        self.sock.send_to(bytes, to).expect("send_to");
    }

    fn send(&self, repr: &PacketRepr, payload: &[u8]) {
        self.send_raw(&Self::build(repr, payload));
    }

    /// The next packet from the victim, its ICRC checked, or `None` by `deadline`.
    fn recv_until(&self, deadline: Instant) -> Option<PacketRepr> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            assert_eq!(from.ip(), IpAddr::V6(victim_ip()), "reply from the victim");
            let b = &buf[..n];
            let ctx = IcrcContext::v6(victim_ip(), attacker_ip(), from.port(), ROCE_UDP_PORT);
            assert_eq!(
                ctx.verify(b, Ipv4IdMode::Exact).ok(),
                Some(IcrcCheck::Valid),
                "the victim's reply has a valid ICRC"
            );
            let (repr, _) = PacketRepr::parse_bytes(b).expect("the victim's reply parses");
            return Some(repr);
        }
    }

    fn recv(&self) -> PacketRepr {
        self.recv_until(Instant::now() + DEADLINE)
            .expect("a reply from the victim")
    }

    /// The next reply must be a NAK `code` for `psn`.
    fn expect_nak(&self, code: NakCode, psn: u32) {
        let r = self.recv();
        assert_eq!(r.bth.opcode, Opcode::RcAcknowledge, "reply {r:?}");
        assert_eq!(r.bth.dest_qp, ATK_RC_QPN);
        assert_eq!(r.aeth.map(|a| a.syndrome), Some(AckSyndrome::Nak(code)));
        assert_eq!(r.bth.psn, psn, "the NAK names the PSN");
    }

    /// A barrier on the RC QP: a zero-length duplicate WRITE (PSN `epsn - 1`) with AckReq; the
    /// next reply must be its ACK, so the victim sent nothing else before it.
    fn rc_barrier(&self, qpn: u32, epsn: u32) {
        let dup = Psn::new(epsn).sub(1).get();
        self.send(&to(write_only(dup, 0, 0, 0), qpn), &[]);
        let r = self.recv();
        assert_eq!(r.bth.opcode, Opcode::RcAcknowledge, "reply {r:?}");
        assert!(
            matches!(r.aeth.map(|a| a.syndrome), Some(AckSyndrome::Ack { .. })),
            "the barrier's reply is a plain ACK: {r:?}"
        );
        assert_eq!(r.bth.psn, dup);
    }
}

fn bth(op: Opcode, qpn: u32, psn: u32) -> BthRepr {
    BthRepr::new(op, qpn, psn)
}

/// RC WRITE ONLY with AckReq.
fn write_only(psn: u32, va: u64, rkey: u32, dma_len: u32) -> PacketRepr {
    let mut b = bth(Opcode::RcWriteOnly, 0, psn);
    b.ack_req = true;
    let mut r = PacketRepr::new(b, 0);
    r.reth = Some(RethRepr { va, rkey, dma_len });
    r
}

fn read_req(psn: u32, va: u64, rkey: u32, dma_len: u32) -> PacketRepr {
    let mut r = PacketRepr::new(bth(Opcode::RcReadRequest, 0, psn), 0);
    r.reth = Some(RethRepr { va, rkey, dma_len });
    r
}

fn atomic(op: Opcode, psn: u32, va: u64, rkey: u32) -> PacketRepr {
    let mut r = PacketRepr::new(bth(op, 0, psn), 0);
    r.atomic_eth = Some(AtomicEthRepr {
        va,
        rkey,
        swap_add: 1,
        compare: 0,
    });
    r
}

/// Addressed to `qpn`.
fn to(mut r: PacketRepr, qpn: u32) -> PacketRepr {
    r.bth.dest_qp = qpn;
    r
}

/// Namespaces, the victim, the legitimate peer and the attacker.
struct Lab {
    _ns: Netns,
    v: Victim,
    peer: Peer,
    atk: Attacker,
}

impl Lab {
    fn up() -> Lab {
        let ns = Netns::up("ho-victim", NET);
        let ok = Command::new("ip")
            .args(["-n", &ns.a(), "addr", "add"])
            .arg(format!("{}/64", attacker_ip()))
            .args(["dev", "eth0", "nodad"])
            .status()
            .expect("ip addr add");
        assert!(ok.success(), "adding the attacker's address");
        let v = in_netns(&ns.b(), build_victim);
        let legit_qpn = v.legit.qpn();
        let peer = in_netns(&ns.a(), move || build_peer(legit_qpn));
        v.legit
            .connect(&Connect::new(
                IpAddr::V6(peer_ip()),
                peer.qp.qpn(),
                0x500,
                0x600,
            ))
            .expect("connect the legit QP");
        let atk = in_netns(&ns.a(), || {
            let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V6(attacker_ip()), ROCE_UDP_PORT))
                .expect("bind the attacker's socket");
            // Room for a READ response burst (the READ flood test).
            let _ = nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::RcvBufForce,
                &(32 << 20),
            );
            Attacker { sock }
        });
        Lab {
            _ns: ns,
            v,
            peer,
            atk,
        }
    }

    /// A legitimate RC WRITE, READ and SEND between the peer and the victim's other QP, all
    /// data checked: a hostile peer on another QP changed nothing for it.
    fn legit_flow_still_works(&self) {
        let (p, v) = (&self.peer, &self.v);
        let vm = v.mr("legit");
        let data = pattern(0xC3, 16384);
        p.mr.write(0, &data);
        let write = SendOp::RdmaWrite {
            remote_addr: vm.addr(),
            rkey: vm.rkey(),
        };
        p.qp.post_send(SendWr::new(
            1,
            write,
            Payload::Sgl(vec![p.mr.sge(0, 16384)]),
        ))
        .unwrap();
        expect_ok(&p.cq, "legit WRITE");
        assert_eq!(&vm.to_vec()[..16384], &data[..], "legit WRITE data");
        let read = SendOp::RdmaRead {
            remote_addr: vm.addr(),
            rkey: vm.rkey(),
        };
        p.qp.post_send(SendWr::new(
            2,
            read,
            Payload::Sgl(vec![p.mr.sge(16384, 16384)]),
        ))
        .unwrap();
        expect_ok(&p.cq, "legit READ");
        assert_eq!(&p.mr.to_vec()[16384..32768], &data[..], "legit READ data");
        v.legit
            .post_recv(RecvWr {
                wr_id: 9,
                sgl: vec![vm.sge(32768, 4096)],
            })
            .unwrap();
        p.qp.post_send(SendWr::new(
            3,
            SendOp::Send,
            Payload::Inline(b"still here".to_vec()),
        ))
        .unwrap();
        expect_ok(&p.cq, "legit SEND");
        let c = expect_ok(&v.legit_cq, "legit receive");
        assert_eq!(c.byte_len, 10);
        assert_eq!(&vm.to_vec()[32768..32778], b"still here");
        assert_eq!(v.legit.state(), Some(QpState::Rts));
    }
}

fn expect_ok(cq: &CompletionQueue, what: &str) -> uroce::Completion {
    let c = cq.wait(1, DEADLINE).expect("wait CQ");
    assert_eq!(c.len(), 1, "{what}: one completion");
    assert_eq!(c[0].status, WcStatus::Success, "{what}: {:?}", c[0]);
    c[0]
}

fn build_victim() -> Victim {
    let dev = Device::open(DeviceConfig::new(IpAddr::V6(victim_ip()))).expect("victim device");
    let pd = dev.alloc_pd();
    let lw = Access::LOCAL_WRITE;
    let all = lw | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC;
    // A region that is deregistered: its rkey goes stale.
    let stale = pd.reg_mr(0x8_0000, 4096, all).unwrap();
    let stale_rkey = stale.rkey();
    drop(stale);
    let layout: [(&str, u64, usize, Access); 9] = [
        ("guard_lo", 0x1_0000, 4096, lw),
        ("rw", 0x2_0000, 8192, all),
        ("ro", 0x3_0000, 4096, Access::REMOTE_READ),
        (
            "noatomic",
            0x4_0000,
            4096,
            lw | Access::REMOTE_WRITE | Access::REMOTE_READ,
        ),
        ("recv", 0x5_0000, 8192, lw),
        ("guard_hi", 0x6_0000, 4096, lw),
        (
            "legit",
            0x7_0000,
            65536,
            lw | Access::REMOTE_WRITE | Access::REMOTE_READ,
        ),
        // Covers the stale region's addresses.
        ("fresh", 0x8_0000, 4096, all),
        ("bulk", 0x10_0000, 1 << 20, Access::REMOTE_READ),
    ];
    let regions: Vec<(&'static str, MemoryRegion)> = layout
        .iter()
        .enumerate()
        .map(|(i, &(name, iova, len, acc))| {
            let mr = pd.reg_mr(iova, len, acc).unwrap();
            mr.write(0, &pattern(i as u8 * 31 + 1, len));
            (name, mr)
        })
        .collect();
    let find = |n: &str| &regions.iter().find(|(x, _)| *x == n).unwrap().1;
    let cq = || dev.create_cq(256, None).unwrap();
    let (rc_cq, uc_cq, ud_cq, legit_cq) = (cq(), cq(), cq(), cq());
    let qp = |t, cq: &CompletionQueue| pd.create_qp(t, cq, cq, None, QpCap::default()).unwrap();
    let rc = qp(QpType::Rc, &rc_cq);
    let uc = qp(QpType::Uc, &uc_cq);
    let ud = qp(QpType::Ud, &ud_cq);
    let legit = qp(QpType::Rc, &legit_cq);
    let attacker = IpAddr::V6(attacker_ip());
    let mut c = Connect::new(attacker, ATK_RC_QPN, RC_EPSN, VICTIM_SQ_PSN);
    c.mtu = Mtu::M1024;
    c.rd_atomic = 2;
    // ≈ 1 s per try: the forged-ACK test must see its WRITE outstanding while it attacks, on
    // a loaded machine too.
    c.timeout = 18;
    rc.connect(&c).unwrap();
    let mut c = Connect::new(attacker, ATK_UC_QPN, UC_EPSN, VICTIM_SQ_PSN);
    c.mtu = Mtu::M1024;
    c.access = lw | Access::REMOTE_WRITE;
    uc.connect(&c).unwrap();
    ud.ud_ready(QKEY, 0).unwrap();
    let recv = find("recv");
    for i in 0..4u64 {
        rc.post_recv(RecvWr {
            wr_id: 100 + i,
            sgl: vec![recv.sge(i * 1024, 1024)],
        })
        .unwrap();
    }
    for i in 0..2u64 {
        uc.post_recv(RecvWr {
            wr_id: 200 + i,
            sgl: vec![recv.sge(4096 + i * 1024, 1024)],
        })
        .unwrap();
    }
    ud.post_recv(RecvWr {
        wr_id: 300,
        sgl: vec![recv.sge(6144, 2048)],
    })
    .unwrap();
    Victim {
        dev,
        regions,
        stale_rkey,
        rc,
        rc_cq,
        uc,
        uc_cq,
        ud,
        ud_cq,
        legit,
        legit_cq,
    }
}

fn build_peer(victim_legit_qpn: u32) -> Peer {
    let dev = Device::open(DeviceConfig::new(IpAddr::V6(peer_ip()))).expect("peer device");
    let pd = dev.alloc_pd();
    let acc = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let mr = pd.reg_mr(0x1000, 65536, acc).unwrap();
    let cq = dev.create_cq(64, None).unwrap();
    let qp = pd
        .create_qp(QpType::Rc, &cq, &cq, None, QpCap::default())
        .unwrap();
    qp.connect(&Connect::new(
        IpAddr::V6(victim_ip()),
        victim_legit_qpn,
        0x600,
        0x500,
    ))
    .unwrap();
    Peer {
        _dev: dev,
        mr,
        qp,
        cq,
    }
}

/// One hostile case: set up, snapshot, attack, then the common after-checks.
fn case(name: &str, attack: impl FnOnce(&Lab)) {
    if !need_root(name) {
        return;
    }
    let lab = Lab::up();
    attack(&lab);
    lab.legit_flow_still_works();
    println!("{name}: reaction as documented; other QP unaffected");
}

/// Asserts that no region changed since `before`.
fn assert_untouched(v: &Victim, before: &[(&'static str, Vec<u8>)]) {
    for ((name, was), (_, now)) in before.iter().zip(v.snapshot()) {
        assert!(*was == now, "region {name} changed");
    }
}

/// Asserts that the RC QP went to ERR and its receive WQEs were flushed (and nothing else
/// completed).
fn assert_rc_in_error(v: &Victim) {
    wait_for("the RC QP in ERR", || v.rc.state() == Some(QpState::Err));
    let cs = Victim::drain(&v.rc_cq);
    assert_eq!(cs.len(), 4, "the 4 posted receives flushed: {cs:?}");
    assert!(
        cs.iter().all(|c| c.status == WcStatus::WrFlushErr),
        "{cs:?}"
    );
}

/// A fatal request on the RC QP: the NAK comes back, the QP goes to ERR, no region changed.
fn fatal_rc(lab: &Lab, repr: PacketRepr, payload: &[u8], code: NakCode) {
    let before = lab.v.snapshot();
    let d0 = lab.v.drops();
    let psn = repr.bth.psn;
    lab.atk.send(&to(repr, lab.v.rc.qpn()), payload);
    lab.atk.expect_nak(code, psn);
    assert_rc_in_error(&lab.v);
    let naks = lab.v.rc.counters().unwrap().naks_sent;
    assert_eq!(
        naks[usize::from(code.code())],
        1,
        "one NAK counted: {naks:?}"
    );
    assert_untouched(&lab.v, &before);
    assert_eq!(lab.v.drops().minus(d0), Drops::default(), "no device drop");
    // In ERR the QP takes no more requests: a valid WRITE now is dropped and changes nothing.
    let rw = lab.v.mr("rw");
    lab.atk.send(
        &to(write_only(psn, rw.addr(), rw.rkey(), 4), lab.v.rc.qpn()),
        b"late",
    );
    wait_for("the late WRITE dropped", || {
        lab.v.drops().minus(d0).wrong_qp == 1
    });
    assert_untouched(&lab.v, &before);
}

// ---- rkeys, bounds, rights -------------------------------------------------------------------

#[test]
fn hostile_unknown_rkey_is_nak_remote_access() {
    case("hostile_unknown_rkey_is_nak_remote_access", |lab| {
        let rw = lab.v.mr("rw");
        // A key no region has: another index, same generation byte.
        let bad = rw.rkey() ^ 0x5500;
        fatal_rc(
            lab,
            write_only(RC_EPSN, rw.addr(), bad, 8),
            b"AAAAAAAA",
            NakCode::RemoteAccessError,
        );
    });
}

#[test]
fn hostile_stale_rkey_is_nak_remote_access() {
    case("hostile_stale_rkey_is_nak_remote_access", |lab| {
        // The deregistered region's key, at addresses a live region ("fresh") now covers.
        let fresh = lab.v.mr("fresh");
        assert_ne!(lab.v.stale_rkey, fresh.rkey());
        fatal_rc(
            lab,
            write_only(RC_EPSN, fresh.addr(), lab.v.stale_rkey, 8),
            b"AAAAAAAA",
            NakCode::RemoteAccessError,
        );
    });
}

#[test]
fn hostile_write_crossing_mr_end_is_nak_remote_access() {
    case(
        "hostile_write_crossing_mr_end_is_nak_remote_access",
        |lab| {
            // 16 bytes inside "rw", 16 past its end (where no region is): nothing may be written,
            // not even the part inside.
            let rw = lab.v.mr("rw");
            let va = rw.addr() + rw.len() as u64 - 16;
            fatal_rc(
                lab,
                write_only(RC_EPSN, va, rw.rkey(), 32),
                &[0xEE; 32],
                NakCode::RemoteAccessError,
            );
        },
    );
}

#[test]
fn hostile_write_below_mr_start_is_nak_remote_access() {
    case("hostile_write_below_mr_start_is_nak_remote_access", |lab| {
        let rw = lab.v.mr("rw");
        fatal_rc(
            lab,
            write_only(RC_EPSN, rw.addr() - 8, rw.rkey(), 16),
            &[0xEE; 16],
            NakCode::RemoteAccessError,
        );
    });
}

#[test]
fn hostile_read_past_mr_end_is_nak_remote_access() {
    case("hostile_read_past_mr_end_is_nak_remote_access", |lab| {
        // A READ of the region plus the 4 KiB after it (u64 VA wrap is covered too: see below).
        let rw = lab.v.mr("rw");
        fatal_rc(
            lab,
            read_req(RC_EPSN, rw.addr(), rw.rkey(), rw.len() as u32 + 4096),
            &[],
            NakCode::RemoteAccessError,
        );
    });
}

#[test]
fn hostile_read_with_wrapping_va_is_nak_remote_access() {
    case(
        "hostile_read_with_wrapping_va_is_nak_remote_access",
        |lab| {
            // VA + length overflows u64: must not wrap into the region.
            let rw = lab.v.mr("rw");
            fatal_rc(
                lab,
                read_req(RC_EPSN, u64::MAX - 15, rw.rkey(), 4096),
                &[],
                NakCode::RemoteAccessError,
            );
        },
    );
}

#[test]
fn hostile_write_to_read_only_mr_is_nak_remote_access() {
    case(
        "hostile_write_to_read_only_mr_is_nak_remote_access",
        |lab| {
            let ro = lab.v.mr("ro");
            fatal_rc(
                lab,
                write_only(RC_EPSN, ro.addr(), ro.rkey(), 8),
                b"AAAAAAAA",
                NakCode::RemoteAccessError,
            );
        },
    );
}

#[test]
fn hostile_atomic_without_atomic_access_is_nak_remote_access() {
    case(
        "hostile_atomic_without_atomic_access_is_nak_remote_access",
        |lab| {
            let m = lab.v.mr("noatomic");
            fatal_rc(
                lab,
                atomic(Opcode::RcFetchAdd, RC_EPSN, m.addr(), m.rkey()),
                &[],
                NakCode::RemoteAccessError,
            );
        },
    );
}

#[test]
fn hostile_misaligned_atomic_is_nak_invalid_request() {
    case("hostile_misaligned_atomic_is_nak_invalid_request", |lab| {
        let rw = lab.v.mr("rw");
        fatal_rc(
            lab,
            atomic(Opcode::RcCompareSwap, RC_EPSN, rw.addr() + 4, rw.rkey()),
            &[],
            NakCode::InvalidRequest,
        );
    });
}

// ---- addressing: QPN, source, P_Key, Q_Key --------------------------------------------------

#[test]
fn hostile_unknown_qpn_is_a_counted_drop() {
    case("hostile_unknown_qpn_is_a_counted_drop", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        for qpn in [0, 1, 0xAB_CDEF, 0xFF_FFFF] {
            lab.atk.send(
                &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), qpn),
                b"AAAAAAAA",
            );
        }
        wait_for("4 unknown-QP drops", || v.drops().minus(d0).unknown_qp == 4);
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_eq!(
            v.drops().minus(d0),
            Drops {
                unknown_qp: 4,
                ..Drops::default()
            }
        );
        assert_untouched(v, &before);
        assert_eq!(v.rc.state(), Some(QpState::Rts));
    });
}

#[test]
fn hostile_forged_qpn_of_another_peers_qp_is_a_counted_drop() {
    case(
        "hostile_forged_qpn_of_another_peers_qp_is_a_counted_drop",
        |lab| {
            // The attacker names the legitimate peer's QP (QPNs are small and guessable) with
            // its next PSN: the source address is not the QP's peer.
            let (v, m) = (&lab.v, lab.v.mr("legit"));
            let before = v.snapshot();
            let d0 = v.drops();
            for psn in [0x500, 0x501] {
                lab.atk.send(
                    &to(write_only(psn, m.addr(), m.rkey(), 8), v.legit.qpn()),
                    b"AAAAAAAA",
                );
            }
            wait_for("2 wrong-source drops", || {
                v.drops().minus(d0).wrong_source == 2
            });
            assert_eq!(
                v.drops().minus(d0),
                Drops {
                    wrong_source: 2,
                    ..Drops::default()
                }
            );
            assert_untouched(v, &before);
        },
    );
}

#[test]
fn hostile_foreign_pkey_is_a_counted_drop() {
    case("hostile_foreign_pkey_is_a_counted_drop", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        let mut r = to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), v.rc.qpn());
        r.bth.pkey = 0x8001;
        lab.atk.send(&r, b"AAAAAAAA");
        wait_for("a bad-P_Key drop", || v.drops().minus(d0).bad_pkey == 1);
        // The limited-membership form of the default partition (0x7FFF) is accepted.
        r.bth.pkey = 0x7FFF;
        lab.atk.send(&r, b"BBBBBBBB");
        let ack = lab.atk.recv();
        assert_eq!(ack.bth.psn, RC_EPSN, "the 0x7FFF WRITE was ACKed: {ack:?}");
        let mut got = [0u8; 8];
        rw.read(0, &mut got);
        assert_eq!(&got, b"BBBBBBBB");
        assert_eq!(
            v.drops().minus(d0),
            Drops {
                bad_pkey: 1,
                ..Drops::default()
            }
        );
        // Everything else as before.
        let mut expect = before.clone();
        expect.iter_mut().find(|(n, _)| *n == "rw").unwrap().1[..8].copy_from_slice(b"BBBBBBBB");
        assert_untouched(v, &expect);
    });
}

fn ud_send(qpn: u32, qkey: u32) -> PacketRepr {
    let mut r = PacketRepr::new(bth(Opcode::UdSendOnly, qpn, 7), 0);
    r.deth = Some(DethRepr { qkey, src_qp: 0x99 });
    r
}

#[test]
fn hostile_wrong_qkey_on_ud_is_a_counted_drop() {
    case("hostile_wrong_qkey_on_ud_is_a_counted_drop", |lab| {
        let v = &lab.v;
        let before = v.snapshot();
        let d0 = v.drops();
        for qkey in [QKEY ^ 1, 0, 0x8001_0000] {
            lab.atk.send(&ud_send(v.ud.qpn(), qkey), b"wrong key");
        }
        wait_for("3 Q_Key drops", || v.ud.counters().unwrap().dropped == 3);
        assert!(Victim::drain(&v.ud_cq).is_empty(), "no receive completed");
        assert_untouched(v, &before);
        // The right Q_Key is delivered (so the drops were for the key): GRH + data.
        lab.atk.send(&ud_send(v.ud.qpn(), QKEY), b"right key");
        let c = expect_ok(&v.ud_cq, "UD receive with the right Q_Key");
        assert_eq!((c.byte_len, c.src_qp), (40 + 9, 0x99));
        let recv = v.mr("recv").to_vec();
        assert_eq!(&recv[6144 + 40..6144 + 49], b"right key");
        assert_eq!(v.drops().minus(d0), Drops::default());
        assert_eq!(v.ud.state(), Some(QpState::Rts));
    });
}

// ---- PSNs -----------------------------------------------------------------------------------

#[test]
fn hostile_psn_storm_ahead_is_one_sequence_nak() {
    case("hostile_psn_storm_ahead_is_one_sequence_nak", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        // 500 WRITEs ahead of the expected PSN, from just ahead to the far edge of the window.
        let n = 500u32;
        for i in 0..n {
            let ahead = 1 + i * (0x7F_FFFF / n);
            let psn = Psn::new(RC_EPSN).add(ahead).get();
            lab.atk.send(
                &to(write_only(psn, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
                b"AAAAAAAA",
            );
        }
        wait_for("500 out-of-sequence requests", || {
            v.rc.counters().unwrap().out_of_sequence == u64::from(n)
        });
        // One NAK for the whole gap, naming the expected PSN; then the barrier's ACK.
        lab.atk.expect_nak(NakCode::PsnSequenceError, RC_EPSN);
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_eq!(v.rc.counters().unwrap().naks_sent, [1, 0, 0, 0]);
        assert_untouched(v, &before);
        assert_eq!(v.rc.state(), Some(QpState::Rts));
        // The expected PSN is still served.
        lab.atk.send(
            &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
            b"in order",
        );
        let ack = lab.atk.recv();
        assert_eq!(
            (ack.bth.opcode, ack.bth.psn),
            (Opcode::RcAcknowledge, RC_EPSN)
        );
        let mut got = [0u8; 8];
        rw.read(0, &mut got);
        assert_eq!(&got, b"in order");
    });
}

#[test]
fn hostile_psn_behind_is_reacked_not_executed() {
    case("hostile_psn_behind_is_reacked_not_executed", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        // Duplicates, near and far behind, carrying new data: re-ACKed with the last PSN
        // received, never written (IBTA §9.7.5.2.2).
        for behind in [1u32, 1000, 0x7F_FFFF] {
            let psn = Psn::new(RC_EPSN).sub(behind).get();
            lab.atk.send(
                &to(write_only(psn, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
                b"replayed",
            );
            let ack = lab.atk.recv();
            assert_eq!(ack.bth.opcode, Opcode::RcAcknowledge);
            assert!(matches!(
                ack.aeth.map(|a| a.syndrome),
                Some(AckSyndrome::Ack { .. })
            ));
            assert_eq!(ack.bth.psn, Psn::new(RC_EPSN).sub(1).get());
        }
        assert_eq!(v.rc.counters().unwrap().duplicates, 3);
        // A duplicate READ with no saved responder resource, and a duplicate atomic: dropped
        // (counted), never executed.
        lab.atk.send(
            &to(
                read_req(Psn::new(RC_EPSN).sub(5).get(), rw.addr(), rw.rkey(), 64),
                v.rc.qpn(),
            ),
            &[],
        );
        lab.atk.send(
            &to(
                atomic(
                    Opcode::RcFetchAdd,
                    Psn::new(RC_EPSN).sub(6).get(),
                    rw.addr(),
                    rw.rkey(),
                ),
                v.rc.qpn(),
            ),
            &[],
        );
        wait_for("2 dropped duplicates", || {
            v.rc.counters().unwrap().dropped == 2
        });
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_untouched(v, &before);
        assert!(Victim::drain(&v.rc_cq).is_empty());
        assert_eq!(v.rc.state(), Some(QpState::Rts));
    });
}

#[test]
fn hostile_duplicate_storm_is_reacked_never_executed() {
    case("hostile_duplicate_storm_is_reacked_never_executed", |lab| {
        // 1000 duplicate WRITEs with new data: each is counted, none is written, and every
        // reply is a plain ACK of the last PSN received (coalesced: at most one per request).
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let n = 1000u32;
        for i in 0..n {
            let psn = Psn::new(RC_EPSN).sub(1 + i % 5000).get();
            lab.atk.send(
                &to(write_only(psn, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
                b"replayed",
            );
        }
        wait_for("1000 duplicates", || {
            v.rc.counters().unwrap().duplicates == u64::from(n)
        });
        // Barrier: a new zero-length WRITE at the expected PSN. Every reply before its ACK is
        // an ACK of ePSN - 1.
        lab.atk
            .send(&to(write_only(RC_EPSN, 0, 0, 0), v.rc.qpn()), &[]);
        let last = Psn::new(RC_EPSN).sub(1).get();
        let mut reacks = 0u32;
        loop {
            let r = lab.atk.recv();
            assert_eq!(r.bth.opcode, Opcode::RcAcknowledge);
            assert!(matches!(
                r.aeth.map(|a| a.syndrome),
                Some(AckSyndrome::Ack { .. })
            ));
            if r.bth.psn == RC_EPSN {
                break;
            }
            assert_eq!(r.bth.psn, last);
            reacks += 1;
        }
        assert!(
            (1..=n).contains(&reacks),
            "{reacks} re-ACKs for {n} duplicates"
        );
        println!("{n} duplicates drew {reacks} re-ACKs");
        assert_untouched(v, &before);
        assert_eq!(v.rc.state(), Some(QpState::Rts));
        assert_eq!(v.rc.counters().unwrap().naks_sent, [0, 0, 0, 0]);
    });
}

// ---- opcode sequence --------------------------------------------------------------------------

#[test]
fn hostile_rc_middle_without_first_is_nak_invalid_request() {
    case(
        "hostile_rc_middle_without_first_is_nak_invalid_request",
        |lab| {
            fatal_rc(
                lab,
                PacketRepr::new(bth(Opcode::RcWriteMiddle, 0, RC_EPSN), 0),
                &[0xEE; MTU],
                NakCode::InvalidRequest,
            );
        },
    );
}

#[test]
fn hostile_rc_send_last_without_first_is_nak_invalid_request() {
    case(
        "hostile_rc_send_last_without_first_is_nak_invalid_request",
        |lab| {
            fatal_rc(
                lab,
                PacketRepr::new(bth(Opcode::RcSendLast, 0, RC_EPSN), 0),
                b"tail",
                NakCode::InvalidRequest,
            );
        },
    );
}

#[test]
fn hostile_uc_middle_without_first_is_dropped() {
    case("hostile_uc_middle_without_first_is_dropped", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        let qpn = v.uc.qpn();
        lab.atk.send(
            &PacketRepr::new(bth(Opcode::UcWriteMiddle, qpn, UC_EPSN), 0),
            &[0xEE; MTU],
        );
        lab.atk.send(
            &PacketRepr::new(bth(Opcode::UcSendLast, qpn, UC_EPSN + 1), 0),
            b"tail",
        );
        wait_for("2 UC drops", || v.uc.counters().unwrap().dropped == 2);
        assert_untouched(v, &before);
        assert!(Victim::drain(&v.uc_cq).is_empty());
        assert_eq!(v.uc.state(), Some(QpState::Rts));
        // UC resynchronises on the next ONLY: a valid WRITE lands.
        let mut w = to(write_only(UC_EPSN + 2, rw.addr(), rw.rkey(), 8), qpn);
        w.bth.opcode = Opcode::UcWriteOnly;
        w.bth.ack_req = false;
        lab.atk.send(&w, b"uc write");
        wait_for("the UC WRITE placed", || rw.to_vec()[..8] == *b"uc write");
        assert_eq!(v.drops().minus(d0), Drops::default());
    });
}

#[test]
fn hostile_read_on_uc_is_a_counted_drop() {
    case("hostile_read_on_uc_is_a_counted_drop", |lab| {
        // UC has no READ or atomics: RC opcodes to a UC QP are of the wrong service.
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        let qpn = v.uc.qpn();
        lab.atk
            .send(&to(read_req(UC_EPSN, rw.addr(), rw.rkey(), 64), qpn), &[]);
        lab.atk.send(
            &to(
                atomic(Opcode::RcFetchAdd, UC_EPSN, rw.addr(), rw.rkey()),
                qpn,
            ),
            &[],
        );
        wait_for("2 wrong-service drops", || {
            v.drops().minus(d0).wrong_qp == 2
        });
        assert_eq!(
            v.drops().minus(d0),
            Drops {
                wrong_qp: 2,
                ..Drops::default()
            }
        );
        assert_untouched(v, &before);
        assert_eq!(v.uc.state(), Some(QpState::Rts));
        // Nothing came back to the attacker: the next reply is the RC barrier's.
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
    });
}

// ---- malformed packets ------------------------------------------------------------------------

#[test]
fn hostile_truncated_headers_are_counted_drops() {
    case("hostile_truncated_headers_are_counted_drops", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        let qpn = v.rc.qpn();
        let full = Attacker::build(
            &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), qpn),
            b"AAAAAAAA",
        );
        // Cut inside the RETH, just after the BTH, and inside the BTH; each re-sealed so the
        // ICRC is valid for what is left.
        for keep in [12 + 10, 12, 8] {
            let mut b = full[..keep].to_vec();
            b.extend_from_slice(&[0; 4]);
            Attacker::reseal(&mut b);
            lab.atk.send_raw(&b);
        }
        // An unknown opcode and TVer 1, both sealed.
        let mut b = full.clone();
        b[0] = 0x1F;
        Attacker::reseal(&mut b);
        lab.atk.send_raw(&b);
        let mut b = full.clone();
        b[1] |= 0x01; // TVer
        Attacker::reseal(&mut b);
        lab.atk.send_raw(&b);
        // Empty and one-byte datagrams.
        lab.atk.send_raw(&[]);
        lab.atk.send_raw(&[0x0A]);
        wait_for("7 malformed", || v.drops().minus(d0).malformed == 7);
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_eq!(
            v.drops().minus(d0),
            Drops {
                malformed: 7,
                ..Drops::default()
            }
        );
        assert_untouched(v, &before);
        assert_eq!(v.rc.state(), Some(QpState::Rts));
    });
}

#[test]
fn hostile_bad_pad_count_is_a_counted_drop() {
    case("hostile_bad_pad_count_is_a_counted_drop", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        // A pad count larger than the bytes after the headers.
        let mut b = Attacker::build(
            &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 0), v.rc.qpn()),
            &[],
        );
        b[1] |= 3 << 4;
        Attacker::reseal(&mut b);
        lab.atk.send_raw(&b);
        // A READ request (no payload allowed) with 4 bytes of payload.
        let r = Attacker::build(
            &to(read_req(RC_EPSN, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
            &[],
        );
        let mut b = r[..r.len() - 4].to_vec();
        b.extend_from_slice(&[0; 8]);
        Attacker::reseal(&mut b);
        lab.atk.send_raw(&b);
        wait_for("2 malformed", || v.drops().minus(d0).malformed == 2);
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_untouched(v, &before);
        assert_eq!(v.rc.state(), Some(QpState::Rts));
    });
}

#[test]
fn hostile_pad_count_shortening_the_payload_is_nak_invalid_request() {
    case(
        "hostile_pad_count_shortening_the_payload_is_nak_invalid_request",
        |lab| {
            // 8 bytes announced in the RETH and carried, but a pad count of 3 leaves 5: the
            // payload disagrees with the RETH length (IBTA C9-91).
            let (v, rw) = (&lab.v, lab.v.mr("rw"));
            let before = v.snapshot();
            let mut b = Attacker::build(
                &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
                b"AAAAAAAA",
            );
            b[1] |= 3 << 4;
            Attacker::reseal(&mut b);
            lab.atk.send_raw(&b);
            lab.atk.expect_nak(NakCode::InvalidRequest, RC_EPSN);
            assert_rc_in_error(v);
            assert_untouched(v, &before);
        },
    );
}

#[test]
fn hostile_payload_longer_than_reth_is_nak_invalid_request() {
    case(
        "hostile_payload_longer_than_reth_is_nak_invalid_request",
        |lab| {
            let rw = lab.v.mr("rw");
            fatal_rc(
                lab,
                write_only(RC_EPSN, rw.addr(), rw.rkey(), 16),
                &[0xEE; 64],
                NakCode::InvalidRequest,
            );
        },
    );
}

#[test]
fn hostile_payload_shorter_than_reth_is_nak_invalid_request() {
    case(
        "hostile_payload_shorter_than_reth_is_nak_invalid_request",
        |lab| {
            let rw = lab.v.mr("rw");
            fatal_rc(
                lab,
                write_only(RC_EPSN, rw.addr(), rw.rkey(), 4096),
                &[0xEE; 64],
                NakCode::InvalidRequest,
            );
        },
    );
}

#[test]
fn hostile_payload_above_mtu_is_nak_invalid_request() {
    case("hostile_payload_above_mtu_is_nak_invalid_request", |lab| {
        // RETH and payload agree, but the packet carries more than the path MTU (C9-88).
        let rw = lab.v.mr("rw");
        let n = MTU + 64;
        fatal_rc(
            lab,
            write_only(RC_EPSN, rw.addr(), rw.rkey(), n as u32),
            &vec![0xEE; n],
            NakCode::InvalidRequest,
        );
    });
}

#[test]
fn hostile_send_above_mtu_is_nak_invalid_request() {
    case("hostile_send_above_mtu_is_nak_invalid_request", |lab| {
        let mut b = bth(Opcode::RcSendOnly, 0, RC_EPSN);
        b.ack_req = true;
        let v = &lab.v;
        let before = v.snapshot();
        lab.atk
            .send(&to(PacketRepr::new(b, 0), v.rc.qpn()), &vec![0xEE; MTU + 4]);
        lab.atk.expect_nak(NakCode::InvalidRequest, RC_EPSN);
        assert_rc_in_error(v);
        assert_untouched(v, &before);
    });
}

#[test]
fn hostile_bad_icrc_is_a_counted_drop() {
    case("hostile_bad_icrc_is_a_counted_drop", |lab| {
        let (v, rw) = (&lab.v, lab.v.mr("rw"));
        let before = v.snapshot();
        let d0 = v.drops();
        let good = Attacker::build(
            &to(write_only(RC_EPSN, rw.addr(), rw.rkey(), 8), v.rc.qpn()),
            b"AAAAAAAA",
        );
        // One bit flipped in the payload, in the BTH's QPN, and in the ICRC itself.
        for at in [good.len() - 8, 6, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x10;
            lab.atk.send_raw(&b);
        }
        wait_for("3 ICRC drops", || v.drops().minus(d0).icrc == 3);
        lab.atk.rc_barrier(lab.v.rc.qpn(), RC_EPSN);
        assert_untouched(v, &before);
        // The same packet with its ICRC intact is executed: the drops were for the ICRC.
        lab.atk.send_raw(&good);
        let ack = lab.atk.recv();
        assert_eq!(
            (ack.bth.opcode, ack.bth.psn),
            (Opcode::RcAcknowledge, RC_EPSN)
        );
        assert_eq!(rw.to_vec()[..8], *b"AAAAAAAA");
        assert_eq!(
            v.drops().minus(d0),
            Drops {
                icrc: 3,
                ..Drops::default()
            }
        );
    });
}

// ---- responder resources, forged responses ----------------------------------------------------

#[test]
fn hostile_read_flood_beyond_max_dest_rd_atomic_is_nak_invalid_request() {
    case(
        "hostile_read_flood_beyond_max_dest_rd_atomic_is_nak_invalid_request",
        |lab| {
            // max_dest_rd_atomic is 2; 64 READs of 1 MiB (1024 response packets each) sent
            // back to back: one of them finds both resources busy streaming (which one depends
            // on scheduling) and is refused.
            let (v, bulk) = (&lab.v, lab.v.mr("bulk"));
            let before = v.snapshot();
            let len = bulk.len() as u32;
            let qpn = v.rc.qpn();
            let per = len / MTU as u32;
            let psns: Vec<u32> = (0..64).map(|i| RC_EPSN + i * per).collect();
            let pkts: Vec<Vec<u8>> = psns
                .iter()
                .map(|&p| {
                    Attacker::build(&to(read_req(p, bulk.addr(), bulk.rkey(), len), qpn), &[])
                })
                .collect();
            for p in &pkts {
                lab.atk.send_raw(p);
            }
            // READ responses for the accepted READs, then the NAK for the refused one.
            let end = Instant::now() + DEADLINE;
            let mut responses = Vec::new();
            let nak = loop {
                let r = lab.atk.recv_until(end).expect("a NAK before the deadline");
                if r.bth.opcode == Opcode::RcAcknowledge {
                    break r;
                }
                assert!(
                    matches!(
                        r.bth.opcode,
                        Opcode::RcReadResponseFirst
                            | Opcode::RcReadResponseMiddle
                            | Opcode::RcReadResponseLast
                    ),
                    "{r:?}"
                );
                responses.push(r.bth.psn);
            };
            assert_eq!(
                nak.aeth.map(|a| a.syndrome),
                Some(AckSyndrome::Nak(NakCode::InvalidRequest))
            );
            let refused = psns
                .iter()
                .position(|&p| p == nak.bth.psn)
                .expect("the NAK names the PSN of one of the READs");
            assert!(refused >= 2, "at least max_dest_rd_atomic READs are served");
            assert!(
                responses
                    .iter()
                    .all(|&p| Psn::new(p).diff(Psn::new(nak.bth.psn)) < 0),
                "nothing of the refused READ or after it was answered"
            );
            println!(
                "READ {refused} of 64 refused after {} response packets",
                responses.len()
            );
            assert_rc_in_error(v);
            assert_untouched(v, &before);
        },
    );
}

#[test]
fn hostile_acks_for_psns_never_sent_are_dropped() {
    case("hostile_acks_for_psns_never_sent_are_dropped", |lab| {
        let v = &lab.v;
        let rc = v.rc.qpn();
        // The victim sends one 16-byte WRITE to the attacker (PSN VICTIM_SQ_PSN).
        let src = v.mr("rw");
        v.rc.post_send(SendWr::new(
            77,
            SendOp::RdmaWrite {
                remote_addr: 0x1234_0000,
                rkey: 0x42,
            },
            Payload::Sgl(vec![src.sge(0, 16)]),
        ))
        .unwrap();
        let req = lab.atk.recv();
        assert_eq!(
            (req.bth.opcode, req.bth.psn, req.bth.dest_qp),
            (Opcode::RcWriteOnly, VICTIM_SQ_PSN, ATK_RC_QPN)
        );
        let ack = |psn: u32, syndrome: AckSyndrome| {
            let mut r = PacketRepr::new(bth(Opcode::RcAcknowledge, rc, psn), 0);
            r.aeth = Some(uroce_wire::AethRepr { syndrome, msn: 1 });
            r
        };
        let plain = AckSyndrome::Ack { credits: 31 };
        // ACKs and NAKs for PSNs never sent, an atomic ACK and READ responses nobody asked
        // for: all dropped and counted, nothing completes, the QP stays in RTS.
        let ahead = |n| Psn::new(VICTIM_SQ_PSN).add(n).get();
        lab.atk.send(&ack(ahead(1), plain), &[]);
        lab.atk.send(&ack(ahead(0x40_0000), plain), &[]);
        lab.atk.send(
            &ack(ahead(5), AckSyndrome::Nak(NakCode::RemoteAccessError)),
            &[],
        );
        lab.atk
            .send(&ack(Psn::new(VICTIM_SQ_PSN).sub(100).get(), plain), &[]);
        let mut aa = PacketRepr::new(bth(Opcode::RcAtomicAcknowledge, rc, ahead(2)), 0);
        aa.aeth = Some(uroce_wire::AethRepr {
            syndrome: plain,
            msn: 1,
        });
        aa.atomic_ack_eth = Some(uroce_wire::AtomicAckEthRepr { orig: 5 });
        lab.atk.send(&aa, &[]);
        let mut rr = PacketRepr::new(bth(Opcode::RcReadResponseOnly, rc, ahead(3)), 0);
        rr.aeth = Some(uroce_wire::AethRepr {
            syndrome: plain,
            msn: 1,
        });
        lab.atk.send(&rr, &[0xEE; 16]);
        let mid = PacketRepr::new(bth(Opcode::RcReadResponseMiddle, rc, VICTIM_SQ_PSN), 0);
        lab.atk.send(&mid, &[0xEE; MTU]);
        wait_for("7 dropped responses", || {
            v.rc.counters().unwrap().dropped == 7
        });
        assert!(Victim::drain(&v.rc_cq).is_empty(), "nothing completed");
        assert_eq!(v.rc.state(), Some(QpState::Rts));
        assert_eq!(v.rc.counters().unwrap().naks_received, [0, 0, 0, 0]);
        // The true ACK completes the WRITE.
        lab.atk.send(&ack(VICTIM_SQ_PSN, plain), &[]);
        let c = expect_ok(&v.rc_cq, "the WRITE, by the true ACK");
        assert_eq!((c.wr_id, c.opcode), (77, WcOpcode::RdmaWrite));
    });
}

#[test]
fn hostile_send_with_invalidate_of_a_regular_mr_is_nak_invalid_request() {
    case(
        "hostile_send_with_invalidate_of_a_regular_mr_is_nak_invalid_request",
        |lab| {
            // The attacker's QP shares the PD with the legitimate QP: it tries to revoke the
            // region the legitimate peer uses. An ordinary region cannot be invalidated
            // remotely (rxe refuses user MRs too); the legit flow after this test proves the
            // rkey still works.
            let v = &lab.v;
            let before = v.snapshot();
            let mut b = bth(Opcode::RcSendOnlyInv, v.rc.qpn(), RC_EPSN);
            b.ack_req = true;
            let mut r = PacketRepr::new(b, 0);
            r.ieth = Some(v.mr("legit").rkey());
            lab.atk.send(&r, &[]);
            lab.atk.expect_nak(NakCode::InvalidRequest, RC_EPSN);
            wait_for("the RC QP in ERR", || v.rc.state() == Some(QpState::Err));
            let cs = Victim::drain(&v.rc_cq);
            let st: Vec<(u64, WcStatus)> = cs.iter().map(|c| (c.wr_id, c.status)).collect();
            assert_eq!(
                st,
                [
                    (100, WcStatus::RemInvReqErr),
                    (101, WcStatus::WrFlushErr),
                    (102, WcStatus::WrFlushErr),
                    (103, WcStatus::WrFlushErr)
                ]
            );
            assert_untouched(v, &before);
        },
    );
}

#[test]
fn hostile_ud_send_larger_than_the_receive_is_loc_len_err() {
    case(
        "hostile_ud_send_larger_than_the_receive_is_loc_len_err",
        |lab| {
            // The UD receive holds 2048 bytes: 40 of GRH and 2008 of data. 2009 do not fit: the
            // receive completes with a length error and nothing is placed.
            let v = &lab.v;
            let before = v.snapshot();
            lab.atk.send(&ud_send(v.ud.qpn(), QKEY), &[0xEE; 2009]);
            let cs = v.ud_cq.wait(1, DEADLINE).unwrap();
            assert_eq!(cs.len(), 1);
            assert_eq!((cs[0].wr_id, cs[0].status), (300, WcStatus::LocLenErr));
            assert_untouched(v, &before);
            assert_eq!(v.ud.state(), Some(QpState::Rts));
        },
    );
}

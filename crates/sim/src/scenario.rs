//! Set-up helpers shared by the simulator's tests: two hosts with a connected QP pair, each
//! with one memory region and one CQ.

use std::net::IpAddr;
use std::sync::Arc;

use uroce_proto::{
    Access, Completion, CqHandle, MrKeys, Mtu, PdHandle, QpAttr, QpCap, QpInit, QpState, QpType,
    VecMemory,
};

use crate::Sim;

/// One side of a connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host index in the simulator.
    pub host: usize,
    /// Protection domain.
    pub pd: PdHandle,
    /// CQ for sends and receives.
    pub cq: CqHandle,
    /// QP number.
    pub qpn: u32,
    /// The region's bytes.
    pub mem: Arc<VecMemory>,
    /// The region's keys.
    pub keys: MrKeys,
    /// The region's first address.
    pub base: u64,
}

/// Options for [`connect`].
#[derive(Debug, Clone, Copy)]
pub struct PairOpts {
    /// Service.
    pub qp_type: QpType,
    /// Path MTU.
    pub mtu: Mtu,
    /// Bytes of memory per side.
    pub mem_len: usize,
    /// Remote rights of each side's QP and region.
    pub access: Access,
    /// Local ACK timeout exponent.
    pub timeout: u8,
    /// Retries.
    pub retry_cnt: u8,
    /// RNR retries.
    pub rnr_retry: u8,
    /// RNR timer code each side asks for.
    pub min_rnr_timer: u8,
    /// READ/atomic depth both ways.
    pub rd_atomic: u8,
    /// Queue capacities.
    pub cap: QpCap,
    /// CQ depth.
    pub cq_depth: usize,
    /// Both devices' `Config::split_writes` (its default: on).
    pub split_writes: bool,
    /// Both devices' `Config::split_reads` (its default: on).
    pub split_reads: bool,
}

impl Default for PairOpts {
    fn default() -> Self {
        PairOpts {
            qp_type: QpType::Rc,
            mtu: Mtu::M1024,
            mem_len: 1 << 16,
            access: Access::LOCAL_WRITE
                | Access::REMOTE_WRITE
                | Access::REMOTE_READ
                | Access::REMOTE_ATOMIC,
            timeout: 10,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 1,
            rd_atomic: 16,
            cap: QpCap {
                max_send_wr: 1024,
                max_recv_wr: 1024,
                ..QpCap::default()
            },
            cq_depth: 8192,
            split_writes: true,
            split_reads: true,
        }
    }
}

/// Base address of the region on host `h` (distinct per host to catch address mix-ups).
pub fn base_of(h: usize) -> u64 {
    0x1000_0000 * (h as u64 + 1)
}

/// Creates a PD, CQ, MR and QP on host `h` (QP left in RESET).
pub fn endpoint(sim: &mut Sim, h: usize, o: &PairOpts) -> Endpoint {
    let dev = sim.dev(h);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(o.cq_depth).expect("cq");
    let mem = VecMemory::zeroed(o.mem_len);
    let keys = dev
        .reg_mr(pd, base_of(h), mem.clone(), o.access)
        .expect("mr");
    let qpn = dev
        .create_qp(QpInit {
            qp_type: o.qp_type,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: o.cap,
            sq_sig_all: false,
        })
        .expect("qp");
    Endpoint {
        host: h,
        pd,
        cq,
        qpn,
        mem,
        keys,
        base: base_of(h),
    }
}

/// Moves `a`'s QP to RTS connected to `b`'s (RC/UC), or to RTS (UD).
pub fn bring_up(sim: &mut Sim, a: &Endpoint, b: &Endpoint, o: &PairOpts) {
    let peer_ip: IpAddr = sim.hosts[b.host].ip;
    let dev = sim.dev(a.host);
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port: Some(1),
        access: Some(o.access),
        qkey: Some(0x1111_1111),
        ..QpAttr::default()
    };
    dev.modify_qp(a.qpn, &init).expect("init");
    let rtr = if o.qp_type == QpType::Ud {
        QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        }
    } else {
        QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(o.mtu),
            dest_ip: Some(peer_ip),
            dest_qpn: Some(b.qpn),
            rq_psn: Some(0x00AB_CD00 ^ b.qpn),
            max_dest_rd_atomic: Some(o.rd_atomic),
            min_rnr_timer: Some(o.min_rnr_timer),
            ..QpAttr::default()
        }
    };
    dev.modify_qp(a.qpn, &rtr).expect("rtr");
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(0x00AB_CD00 ^ a.qpn),
        timeout: Some(o.timeout),
        retry_cnt: Some(o.retry_cnt),
        rnr_retry: Some(o.rnr_retry),
        max_rd_atomic: Some(o.rd_atomic),
        ..QpAttr::default()
    };
    dev.modify_qp(a.qpn, &rts).expect("rts");
}

/// Two hosts (10.0.0.1 and 10.0.0.2) with connected QPs.
pub fn pair(sim: &mut Sim, o: &PairOpts) -> (Endpoint, Endpoint) {
    let host = |sim: &mut Sim, ip: [u8; 4]| {
        let mut config = uroce_proto::Config::new(ip.into());
        config.split_writes = o.split_writes;
        config.split_reads = o.split_reads;
        sim.add_host_with(config)
    };
    let h0 = host(sim, [10, 0, 0, 1]);
    let h1 = host(sim, [10, 0, 0, 2]);
    let a = endpoint(sim, h0, o);
    let b = endpoint(sim, h1, o);
    bring_up(sim, &a, &b, o);
    bring_up(sim, &b, &a, o);
    (a, b)
}

/// Takes every completion waiting on `ep`'s CQ.
pub fn drain(sim: &mut Sim, ep: &Endpoint) -> Vec<Completion> {
    let mut v = Vec::new();
    while let Ok(Some(c)) = sim.dev(ep.host).poll_cq(ep.cq) {
        v.push(c);
    }
    v
}

impl Endpoint {
    /// An SGE for `len` bytes at offset `off` of this endpoint's region.
    pub fn sge(&self, off: u64, len: u32) -> uroce_proto::Sge {
        uroce_proto::Sge {
            addr: self.base + off,
            length: len,
            lkey: self.keys.lkey,
        }
    }

    /// Fills `len` bytes at `off` of the region with a pattern derived from `seed`; returns them.
    pub fn fill(&self, off: usize, len: usize, seed: u8) -> Vec<u8> {
        let data = pattern(len, seed);
        uroce_proto::RegionMemory::write(&*self.mem, off, &data);
        data
    }

    /// The region's bytes `[off, off + len)`.
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        self.mem.to_vec()[off..off + len].to_vec()
    }

    /// The QP's counters.
    pub fn counters(&self, sim: &Sim) -> uroce_proto::QpCounters {
        sim.hosts[self.host]
            .dev
            .qp(self.qpn)
            .expect("endpoint QP exists")
            .counters()
    }

    /// The QP's state.
    pub fn state(&self, sim: &Sim) -> QpState {
        sim.hosts[self.host]
            .dev
            .qp_state(self.qpn)
            .expect("endpoint QP exists")
    }
}

/// A SEND of `len` bytes at offset `off` of `a`'s region into a receive `b` posts first, at
/// the same offset of its region; both work requests get `wr_id`. Nothing is transmitted yet.
pub fn post_send_recv(sim: &mut Sim, a: &Endpoint, b: &Endpoint, wr_id: u64, off: u64, len: u32) {
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            uroce_proto::RecvWr {
                wr_id,
                sgl: vec![b.sge(off, len)],
            },
        )
        .expect("post_recv");
    let wr = uroce_proto::SendWr::new(
        wr_id,
        uroce_proto::SendOp::Send,
        uroce_proto::Payload::Sgl(vec![a.sge(off, len)]),
    );
    sim.post_send(a.host, a.qpn, wr).expect("post_send");
}

/// `count` RDMA WRITEs of `size` bytes, all posted at once: WRITE `i` (wr_id `i`) copies slot
/// `i` (offset `i * size`) of `a`'s region to the same slot of `b`'s. Nothing is transmitted
/// yet.
pub fn post_write_slots(sim: &mut Sim, a: &Endpoint, b: &Endpoint, count: usize, size: usize) {
    for i in 0..count {
        let off = (i * size) as u64;
        let w = uroce_proto::SendWr::new(
            i as u64,
            uroce_proto::SendOp::RdmaWrite {
                remote_addr: b.base + off,
                rkey: b.keys.rkey,
            },
            uroce_proto::Payload::Sgl(vec![a.sge(off, size as u32)]),
        );
        sim.post_send(a.host, a.qpn, w).expect("post_send");
    }
}

/// `len` bytes of a pattern that differs per `seed` and has no short period.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761) ^ u32::from(seed).wrapping_mul(0x9E37);
            (x >> 13) as u8 ^ seed
        })
        .collect()
}

/// Runs the simulator until `ep`'s CQ has yielded `n` completions (collected in order) or
/// `limit` of virtual time passed; panics on timeout, naming what arrived.
pub fn wait_completions(
    sim: &mut Sim,
    ep: &Endpoint,
    n: usize,
    limit: std::time::Duration,
) -> Vec<Completion> {
    let mut got = Vec::new();
    let ok = sim.run_until(limit, |s| {
        got.extend(drain(s, ep));
        got.len() >= n
    });
    assert!(ok, "timed out waiting for {n} completions, got {got:?}");
    got
}

/// Runs the simulator for `d` of virtual time (or until nothing is left to happen).
pub fn settle(sim: &mut Sim, d: std::time::Duration) {
    sim.run_until(d, |_| false);
}

/// Hands every packet the devices have ready to the network now, without advancing time: the
/// packets are then in flight and can be inspected or dropped with [`drop_in_flight`].
pub fn transmit_now(sim: &mut Sim) {
    sim.transmit_all();
}

/// The PSNs of the packets in flight to host `to`, in the order they were sent (none removed).
pub fn psns_in_flight(sim: &mut Sim, to: usize) -> Vec<u32> {
    let mut psns = Vec::new();
    drop_in_flight(sim, |_, host, p| {
        if host == to {
            psns.extend(psn_of(p));
        }
        false
    });
    psns
}

/// Removes in-flight packets for which `f(source, destination host, UDP payload)` holds (a
/// targeted loss, e.g. one ACK or one middle packet); returns how many were removed.
pub fn drop_in_flight(
    sim: &mut Sim,
    mut f: impl FnMut(std::net::SocketAddr, usize, &[u8]) -> bool,
) -> usize {
    let before = sim.queue.len();
    let kept: Vec<_> = std::mem::take(&mut sim.queue)
        .into_iter()
        .filter(|std::cmp::Reverse(p)| !f(p.from, p.to, &p.bytes))
        .collect();
    sim.queue = kept.into_iter().collect();
    let dropped = before - sim.queue.len();
    sim.stats.lost += dropped as u64;
    dropped
}

/// Like [`drop_in_flight`], but offers each packet to `f` only once: packets handed to the
/// network before the previous call with the same `cursor` are skipped. Call it before every
/// step (e.g. from a `run_until` condition) for a per-packet loss decision, such as losing a
/// share of one direction's packets only.
pub fn drop_new_in_flight(
    sim: &mut Sim,
    cursor: &mut u64,
    mut f: impl FnMut(std::net::SocketAddr, usize, &[u8]) -> bool,
) -> usize {
    let since = *cursor;
    if sim.seq == since {
        return 0;
    }
    *cursor = sim.seq;
    let before = sim.queue.len();
    sim.queue
        .retain(|std::cmp::Reverse(p)| p.seq <= since || !f(p.from, p.to, &p.bytes));
    let dropped = before - sim.queue.len();
    sim.stats.lost += dropped as u64;
    dropped
}

/// The BTH opcode of a RoCEv2 transport packet (its first byte).
pub fn opcode_of(packet: &[u8]) -> Option<uroce_wire::Opcode> {
    packet.first().and_then(|b| uroce_wire::Opcode::from_u8(*b))
}

/// The BTH PSN of a RoCEv2 transport packet.
pub fn psn_of(packet: &[u8]) -> Option<u32> {
    packet
        .get(9..12)
        .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
}

/// A record of one packet put on the wire, as seen by [`record_packets`].
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it was sent.
    pub at: uroce_proto::Instant,
    /// Source address.
    pub src: std::net::SocketAddr,
    /// Destination address.
    pub dst: std::net::SocketAddr,
    /// The UDP payload.
    pub bytes: Vec<u8>,
}

/// Installs a tap that records every packet put on the wire; read the list after the run.
pub fn record_packets(sim: &mut Sim) -> std::rc::Rc<std::cell::RefCell<Vec<Seen>>> {
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let l = log.clone();
    sim.set_tap(Box::new(move |at, src, dst, bytes| {
        l.borrow_mut().push(Seen {
            at,
            src,
            dst,
            bytes: bytes.to_vec(),
        });
    }));
    log
}

/// A pcap file being written by the tap [`capture_pcap`] installed.
pub struct PcapCapture<W: std::io::Write> {
    inner: std::rc::Rc<std::cell::RefCell<PcapState<W>>>,
}

struct PcapState<W: std::io::Write> {
    writer: Option<uroce_capture::pcap::PcapWriter<W>>,
    frames: u64,
    error: Option<String>,
}

impl<W: std::io::Write> core::fmt::Debug for PcapCapture<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcapCapture")
            .field("frames", &self.inner.borrow().frames)
            .finish_non_exhaustive()
    }
}

impl<W: std::io::Write> PcapCapture<W> {
    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.inner.borrow().frames
    }

    /// Stops capturing (later packets are not written) and returns the writer, or the first
    /// error met while writing.
    pub fn finish(self) -> Result<W, String> {
        let mut st = self.inner.borrow_mut();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.writer
            .take()
            .map(uroce_capture::pcap::PcapWriter::into_inner)
            .ok_or_else(|| "capture already finished".to_string())
    }
}

/// Writes every packet the simulator puts on the wire to a pcap file (`LINKTYPE_RAW`, one
/// IPv4/IPv6 + UDP datagram per record, virtual time as timestamps), replacing any other tap.
///
/// The IPv4 Identification is not visible to a tap: the device sealed GSO segment `i` with ID
/// `i`. The writer recovers it by solving the ICRC for an ID below the device's segment limit,
/// so every recorded frame carries the ID its ICRC was computed with and verifies exactly.
pub fn capture_pcap<W: std::io::Write + 'static>(
    sim: &mut Sim,
    out: W,
) -> Result<PcapCapture<W>, uroce_capture::pcap::PcapError> {
    let max_segments = sim
        .hosts
        .iter()
        .map(|h| h.dev.config().max_segments)
        .max()
        .unwrap_or(64);
    let bound = u16::try_from(max_segments).unwrap_or(u16::MAX);
    let state = std::rc::Rc::new(std::cell::RefCell::new(PcapState {
        writer: Some(uroce_capture::pcap::PcapWriter::new(out)?),
        frames: 0,
        error: None,
    }));
    let st = state.clone();
    sim.set_tap(Box::new(move |at, src, dst, bytes| {
        let mut st = st.borrow_mut();
        let Some(mut ctx) = uroce_wire::IcrcContext::between(src, dst, 0) else {
            return;
        };
        if let Ok(uroce_wire::IcrcCheck::SolvedIpv4Id(id)) =
            ctx.verify(bytes, uroce_wire::Ipv4IdMode::SolveBelow(bound))
        {
            ctx = ctx.with_ipv4_id(id);
        }
        let ts = std::time::Duration::from_nanos(at.as_nanos());
        let Some(w) = st.writer.as_mut() else { return };
        match w.write_roce(ts, &ctx, bytes) {
            Ok(()) => st.frames += 1,
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e.to_string());
                }
            }
        }
    }));
    Ok(PcapCapture { inner: state })
}

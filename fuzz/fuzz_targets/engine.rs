//! Fuzz target `engine`: a live `uroce_proto::Device` ("A", 10.0.0.1) with connected RC and UC
//! QPs, a UD QP and memory regions of several access rights, against a simulated peer: a second
//! real `Device` ("B", 10.0.0.2) whose packets the fuzzer delivers, mutates, drops or replaces.
//!
//! The input is a sequence of actions (first byte of each selects it, the following bytes are
//! its arguments; missing bytes read as zero):
//!
//! - deliver the oldest queued packet in either direction, unchanged;
//! - deliver it after a structured mutation (set/xor a byte, truncate, append), resealed with a
//!   valid ICRC or not, so mutated headers get past the ICRC check and reach the QP logic;
//! - a raw datagram from the input, optionally aimed at one of A's QPs (opcode, default P_Key
//!   and destination QPN written in) and sealed;
//! - advance the clock (µs to seconds) and fire due timers on both sides;
//! - post sends of every kind (SEND, WRITE, READ, atomics, with immediate) on either side, with
//!   valid, wrong or out-of-range keys and addresses; post receives; drop queued packets; poll.
//!
//! WRITE framing: bit 7 of the first byte frames multi-packet RC WRITEs FIRST/MIDDLE/LAST, as
//! rxe and NICs do (`Config::split_writes` off); without it they leave as WRITE ONLY packets,
//! uroce's default. Only FIRST/MIDDLE/LAST WRITEs are placed (below).
//!
//! Zero-copy receive: bits 5-6 of the first byte make the receiving device get datagrams
//! the way the io_uring driver does when it places payloads (`driver/place.rs`): queued packets
//! are coalesced as GRO would (same-size segments, a shorter last one), planned with
//! `plan_placement` (a peek at the first header) or `plan_next` (no peek: whatever datagram
//! comes, mutated, raw or of another QP, lands on the plan), scattered by a simulated kernel
//! `recvmsg` (payload pieces into the regions, the rest into a buffer whose payload bytes are
//! junk) and handed to `handle_placed`. Checked on every plan: each piece lies in a region with
//! a write right, inside a destination a WRITE's RETH (of a packet delivered to the QP) or a
//! READ's SGL (posted on the QP) named, one path MTU long, MTU-aligned and past the message's
//! first packet; the delivery changes no region byte outside the pieces and the destinations
//! packets could name; the placement counters grow by at most the planned segments.
//!
//! Checked after every action: nothing panics; one transmit drain is bounded (no livelock);
//! every completion names a QP of its device and a WR that was posted there and not yet
//! completed, with a plausible length; a CQ never holds more than its depth; the region that
//! was registered without any write right (local or remote) is byte-identical at the end.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use uroce_proto::{
    Access, AhHandle, AtomicMemory, Completion, Config, CqHandle, Device, Instant, MrKeys, Mtu,
    Payload, Placement, QpAttr, QpCap, QpInit, QpState, QpType, RecvWr, RegionMemory, Scatter,
    SendFlags, SendOp, SendWr, Sge, UdDest, WcOpcode, WcStatus,
};
use uroce_wire::{IcrcContext, IpFields, ROCE_UDP_PORT};

/// Most queued packets per direction (older ones are dropped, as a full NIC queue would).
const QUEUE_MAX: usize = 512;
/// Most packets one drain of a device may yield; more means a transmit livelock.
const DRAIN_MAX: usize = 20_000;
const CQ_DEPTH: usize = 64;
const MEM_LEN: usize = 4096;
const QKEY: u32 = 0x1111_1111;
/// Most packets GRO coalesces into one datagram here.
const GRO_MAX: usize = 8;
/// The driver's receive buffer: the most a `plan_next` plan expects.
const PLACE_BUF: usize = 65536;

/// Deliveries handled with a plan (`handle_placed`), and executions with at least one,
/// printed at every power of two so that a run shows how often placement is reached.
static PLACED_DELIVERIES: AtomicU64 = AtomicU64::new(0);
static PLACED_EXECUTIONS: AtomicU64 = AtomicU64::new(0);
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// How datagrams reach the receiver (bits 5-6 of the first input byte).
#[derive(Debug, Clone, Copy, PartialEq)]
enum PlaceMode {
    /// `handle_datagram`, one packet at a time (the syscall and multishot paths).
    Off,
    /// GRO-coalesced, planned from a peek at the first header.
    Peek,
    /// GRO-coalesced, planned without a peek.
    Next,
    /// Peek and no peek, alternately.
    Both,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// What a posted WR expects of its completion.
#[derive(Debug, Clone, Copy)]
struct Posted {
    qpn: u32,
    recv: bool,
    len: u64,
    opcode: WcOpcode,
}

struct Side {
    dev: Device,
    ip: Ipv4Addr,
    cq: CqHandle,
    /// RC, UC, UD QP numbers.
    qps: [u32; 3],
    /// Regions: all rights; remote read only (no write right at all); atomic 64 bytes.
    mrs: [MrKeys; 3],
    mems: [Arc<AtomicMemory>; 3],
    bases: [u64; 3],
    ah: AhHandle,
    posted: HashMap<u64, Posted>,
    /// Destinations packets or WRs could make this side write: (region, offset, length) of
    /// every RETH, AtomicETH and READ/atomic/receive SGE seen (a superset of the checked ones).
    dests: Vec<(usize, u64, u64)>,
    /// The subset a placed payload may go to: WRITE RETHs and READ SGLs of the RC QP, with
    /// whether it is a WRITE's.
    place_dests: Vec<(usize, u64, u64, bool)>,
}

impl Side {
    /// The region and offset of virtual address `va`, if it lies in one.
    fn region_of(&self, va: u64) -> Option<(usize, u64)> {
        (0..3).find_map(|i| {
            let off = va.checked_sub(self.bases[i])?;
            (off < self.mems[i].len() as u64).then_some((i, off))
        })
    }

    /// `placeable`: `Some(is_write)` for a destination of the RC QP's WRITEs or READs.
    fn note_dest(&mut self, va: u64, len: u64, placeable: Option<bool>) {
        if let Some((i, off)) = self.region_of(va) {
            self.dests.push((i, off, len));
            if let Some(write) = placeable {
                self.place_dests.push((i, off, len, write));
            }
        }
    }

    /// Records the destination a packet arriving here names (RETH or AtomicETH).
    fn note_packet(&mut self, p: &[u8]) {
        if p.len() < 40 {
            return;
        }
        let qpn = u32::from_be_bytes([0, p[5], p[6], p[7]]);
        let va = u64::from_be_bytes(p[12..20].try_into().expect("8 bytes"));
        let len = u64::from(u32::from_be_bytes(p[24..28].try_into().expect("4 bytes")));
        match p[0] & 0x1F {
            // WRITE FIRST, ONLY, ONLY with immediate (any transport: the opcode's low bits).
            0x06 | 0x0A | 0x0B => {
                let rc = qpn == self.qps[0] && p[0] < 0x20;
                self.note_dest(va, len, rc.then_some(true))
            }
            // Atomics.
            0x13 | 0x14 => self.note_dest(va, 8, None),
            _ => {}
        }
    }
}

fn make_side(ip: Ipv4Addr, h: u64, framed_writes: bool) -> Side {
    let mut cfg = Config::new(IpAddr::V4(ip));
    cfg.split_writes = !framed_writes;
    // Small windows so limits and go-back-N are reached within a short input.
    cfg.max_unacked_psns = 64;
    cfg.ack_req_interval = 8;
    cfg.max_segments = 4;
    let mut dev = Device::new(cfg);
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(CQ_DEPTH).expect("cq");
    let all =
        Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC;
    let rights = [all, Access::REMOTE_READ, all];
    let lens = [MEM_LEN, MEM_LEN, 64];
    // Regions the kernel can address (`raw_parts`): only those are ever planned.
    let mems: [Arc<AtomicMemory>; 3] = std::array::from_fn(|i| {
        let m = AtomicMemory::zeroed(lens[i]);
        let fill: Vec<u8> = (0..lens[i]).map(|j| (j as u8) ^ (i as u8 * 0x55)).collect();
        m.write(0, &fill);
        m
    });
    let bases: [u64; 3] = std::array::from_fn(|i| 0x1000_0000 * h + 0x10_0000 * i as u64);
    let mrs: [MrKeys; 3] = std::array::from_fn(|i| {
        dev.reg_mr(pd, bases[i], mems[i].clone(), rights[i])
            .expect("mr")
    });
    let qps = [QpType::Rc, QpType::Uc, QpType::Ud].map(|t| {
        dev.create_qp(QpInit {
            qp_type: t,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: QpCap {
                max_send_wr: 32,
                max_recv_wr: 32,
                ..QpCap::default()
            },
            sq_sig_all: false,
        })
        .expect("qp")
    });
    let peer = if h == 1 { [10, 0, 0, 2] } else { [10, 0, 0, 1] };
    let ah = dev.create_ah(pd, IpAddr::from(peer)).expect("ah");
    Side {
        dev,
        ip,
        cq,
        qps,
        mrs,
        mems,
        bases,
        ah,
        posted: HashMap::new(),
        dests: Vec::new(),
        place_dests: Vec::new(),
    }
}

fn connect(s: &mut Side, peer_ip: Ipv4Addr, peer_qps: [u32; 3], mtu: Mtu, timeout: u8) {
    let access =
        Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC;
    for (i, &qpn) in s.qps.iter().enumerate() {
        let ud = i == 2;
        let d = &mut s.dev;
        d.modify_qp(
            qpn,
            &QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port: Some(1),
                access: Some(access),
                qkey: Some(QKEY),
                ..QpAttr::default()
            },
        )
        .expect("init");
        let rtr = if ud {
            QpAttr {
                state: Some(QpState::Rtr),
                ..QpAttr::default()
            }
        } else {
            QpAttr {
                state: Some(QpState::Rtr),
                path_mtu: Some(mtu),
                dest_ip: Some(IpAddr::V4(peer_ip)),
                dest_qpn: Some(peer_qps[i]),
                rq_psn: Some(0x00FF_FF00 ^ peer_qps[i]),
                max_dest_rd_atomic: Some(4),
                min_rnr_timer: Some(1),
                ..QpAttr::default()
            }
        };
        d.modify_qp(qpn, &rtr).expect("rtr");
        d.modify_qp(
            qpn,
            &QpAttr {
                state: Some(QpState::Rts),
                sq_psn: Some(0x00FF_FF00 ^ qpn),
                timeout: Some(timeout),
                retry_cnt: Some(3),
                rnr_retry: Some(2),
                max_rd_atomic: Some(4),
                ..QpAttr::default()
            },
        )
        .expect("rts");
    }
}

struct World {
    a: Side,
    b: Side,
    now: Instant,
    /// Packets in flight: index 0 from A to B, 1 from B to A.
    wire: [VecDeque<Vec<u8>>; 2],
    next_wr: u64,
    buf: Vec<u8>,
    place: PlaceMode,
    plan: Placement,
    /// Deliveries so far (alternates peek/no peek in `PlaceMode::Both`).
    deliveries: u64,
    /// Deliveries handled with a plan.
    placed: u64,
}

impl World {
    fn side(&mut self, which: usize) -> &mut Side {
        if which == 0 {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Moves every ready packet of both devices onto the wire (GSO batches split).
    fn pump(&mut self) {
        for dir in 0..2 {
            let now = self.now;
            let mut n = 0;
            loop {
                let s = if dir == 0 { &mut self.a } else { &mut self.b };
                let Some(t) = s.dev.poll_transmit(now, &mut self.buf) else {
                    break;
                };
                assert!(t.len <= self.buf.len());
                assert_eq!(t.dst.port(), ROCE_UDP_PORT);
                let seg = t.segment_size.unwrap_or(t.len).max(1);
                for chunk in self.buf[..t.len].chunks(seg) {
                    n += 1;
                    let q = &mut self.wire[dir];
                    if q.len() >= QUEUE_MAX {
                        q.pop_front();
                    }
                    q.push_back(chunk.to_vec());
                }
                assert!(n <= DRAIN_MAX, "transmit drain does not end");
            }
        }
    }

    /// Hands `bytes` to the device at the end of direction `dir`.
    fn deliver(&mut self, dir: usize, bytes: &[u8], from: Option<Ipv4Addr>) {
        let (src, dst) = if dir == 0 {
            (self.a.ip, self.b.ip)
        } else {
            (self.b.ip, self.a.ip)
        };
        let from = SocketAddr::new(IpAddr::V4(from.unwrap_or(src)), ROCE_UDP_PORT);
        let (now, place) = (self.now, self.place);
        let rx = self.side(1 - dir);
        rx.note_packet(bytes);
        if place == PlaceMode::Off {
            rx.dev.handle_datagram(now, from, IpAddr::V4(dst), bytes);
        } else {
            self.deliver_gro(dir, bytes.to_vec(), bytes.len(), from);
        }
    }

    /// Delivers the oldest queued packet of direction `dir`, coalesced with the ones behind
    /// it as GRO would: segments of one size, the last one possibly shorter.
    fn deliver_oldest(&mut self, dir: usize) {
        let Some(first) = self.wire[dir].pop_front() else {
            return;
        };
        if self.place == PlaceMode::Off {
            return self.deliver(dir, &first, None);
        }
        let seg = first.len();
        let mut data = first;
        let rx = if dir == 0 { &mut self.b } else { &mut self.a };
        rx.note_packet(&data);
        for _ in 1..GRO_MAX {
            let Some(next) = self.wire[dir].front() else {
                break;
            };
            if next.is_empty() || next.len() > seg || data.len() % seg != 0 {
                break;
            }
            let next = self.wire[dir].pop_front().expect("front");
            rx.note_packet(&next);
            data.extend_from_slice(&next);
        }
        let src = if dir == 0 { self.a.ip } else { self.b.ip };
        let from = SocketAddr::new(IpAddr::V4(src), ROCE_UDP_PORT);
        self.deliver_gro(dir, data, seg, from);
    }

    /// Hands a datagram of `seg`-byte segments to the receiver of direction `dir` as the
    /// uring driver does when it places (module docs), checking the plan and its effects.
    fn deliver_gro(&mut self, dir: usize, data: Vec<u8>, seg: usize, from: SocketAddr) {
        let now = self.now;
        self.deliveries += 1;
        let unpeeked = match self.place {
            PlaceMode::Next => true,
            PlaceMode::Both => self.deliveries.is_multiple_of(2),
            _ => false,
        };
        let mut plan = std::mem::take(&mut self.plan);
        let rx = if dir == 0 { &mut self.b } else { &mut self.a };
        let to = IpAddr::V4(rx.ip);
        let planned = if unpeeked {
            rx.dev.plan_next(rx.qps[0], PLACE_BUF, &mut plan)
        } else {
            rx.dev
                .plan_placement(from, &data, seg, data.len(), &mut plan)
        };
        if !planned {
            for chunk in data.chunks(seg.max(1)) {
                rx.dev.handle_datagram(now, from, to, chunk);
            }
            self.plan = plan;
            return;
        }
        check_plan(rx, &plan);
        let before: Vec<Vec<u8>> = rx.mems.iter().map(|m| m.to_vec()).collect();
        let counters = rx.dev.counters();
        let cap = if unpeeked { PLACE_BUF } else { data.len() };
        let mut scratch = kernel_scatter(&plan, cap, &data);
        rx.dev
            .handle_placed(now, from, to, &mut scratch, seg, &plan);
        let after = rx.dev.counters();
        let placed = after.rx_placed - counters.rx_placed;
        let misses = after.rx_place_misses - counters.rx_place_misses;
        assert!(
            placed + misses <= plan.segments as u64,
            "{placed} placed + {misses} misses for {} planned segments",
            plan.segments
        );
        check_untouched(rx, &plan, &before);
        self.placed += 1;
        PLACED_DELIVERIES.fetch_add(1, Relaxed);
        self.plan = plan;
    }

    fn seal(&self, dir: usize, bytes: &mut [u8]) {
        let (src, dst) = if dir == 0 {
            (self.a.ip, self.b.ip)
        } else {
            (self.b.ip, self.a.ip)
        };
        if bytes.len() >= 16 {
            IcrcContext {
                ip: IpFields::v4(src, dst, 0),
                src_port: ROCE_UDP_PORT,
                dst_port: ROCE_UDP_PORT,
            }
            .seal(bytes);
        }
    }

    fn advance(&mut self, nanos: u64) {
        self.now = Instant::from_nanos(self.now.as_nanos().saturating_add(nanos));
        for s in [&mut self.a, &mut self.b] {
            if let Some(t) = s.dev.poll_timeout() {
                if t <= self.now {
                    s.dev.handle_timeout(self.now);
                }
            }
        }
    }

    fn post_send(&mut self, which: usize, inp: &mut Input) {
        let sel = inp.u8();
        let qi = usize::from(sel % 3);
        let kind = sel / 3 % 8;
        let flags = inp.u8();
        let mr = usize::from(flags % 3);
        let off = u64::from(inp.u16() % 4200);
        let len = u32::from(inp.u16() % 4200);
        let key_sel = inp.u8();
        let imm = inp.u32();
        let wr_id = self.next_wr;
        self.next_wr += 1;
        let now = self.now;
        let (peer_rkeys, peer_bases, peer_ud) = {
            let p = if which == 0 { &self.b } else { &self.a };
            (p.mrs.map(|k| k.rkey), p.bases, p.qps[2])
        };
        let s = self.side(which);
        let rmr = usize::from(key_sel % 3);
        let rkey = match key_sel / 3 % 4 {
            0 | 1 => peer_rkeys[rmr],
            2 => peer_rkeys[rmr] ^ 0x100, // stale generation
            _ => imm,
        };
        let raddr = peer_bases[rmr].wrapping_add(u64::from(imm % 5000));
        let op = match kind {
            0 => SendOp::Send,
            1 => SendOp::SendWithImm(imm),
            2 => SendOp::RdmaWrite {
                remote_addr: raddr,
                rkey,
            },
            3 => SendOp::RdmaWriteWithImm {
                remote_addr: raddr,
                rkey,
                imm,
            },
            4 => SendOp::RdmaRead {
                remote_addr: raddr,
                rkey,
            },
            5 => SendOp::CompareSwap {
                remote_addr: raddr & !7,
                rkey,
                compare: 0,
                swap: u64::from(imm),
            },
            6 => SendOp::FetchAdd {
                remote_addr: raddr,
                rkey,
                add: 1,
            },
            _ => SendOp::SendWithInv(rkey),
        };
        let payload = if flags & 0x80 != 0 && len <= 64 {
            Payload::Inline(vec![0xA5; len as usize])
        } else {
            let lkey = if flags & 0x40 != 0 {
                s.mrs[mr].lkey ^ 0x100
            } else {
                s.mrs[mr].lkey
            };
            let len = if op.is_atomic() { 8 } else { len };
            Payload::Sgl(vec![Sge {
                addr: s.bases[mr] + off,
                length: len,
                lkey,
            }])
        };
        let plen = payload.len();
        let opcode = op.wc_opcode();
        let mut wr = SendWr::new(wr_id, op, payload);
        wr.flags = SendFlags {
            signaled: flags & 0x20 == 0,
            solicited: flags & 0x10 != 0,
            fence: flags & 0x08 != 0,
        };
        if qi == 2 {
            wr.ud = Some(UdDest {
                ah: s.ah,
                remote_qpn: if flags & 0x04 != 0 {
                    imm & 0xFF_FFFF
                } else {
                    peer_ud
                },
                remote_qkey: if flags & 0x02 != 0 { imm } else { QKEY },
            });
        }
        let qpn = s.qps[qi];
        // The local SGE a response writes: a READ's data (placeable on the RC QP), an atomic's
        // original value (copied from its ACK, never placed).
        let local_sge = match (&wr.op, &wr.payload) {
            (SendOp::RdmaRead { .. }, Payload::Sgl(v)) => {
                Some((v[0].addr, v[0].length, (qi == 0).then_some(false)))
            }
            (SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }, Payload::Sgl(v)) => {
                Some((v[0].addr, v[0].length, None))
            }
            _ => None,
        };
        if s.dev.post_send(now, qpn, wr).is_ok() {
            if let Some((addr, n, placeable)) = local_sge {
                s.note_dest(addr, u64::from(n), placeable);
            }
            s.posted.insert(
                wr_id,
                Posted {
                    qpn,
                    recv: false,
                    len: plen,
                    opcode,
                },
            );
        }
    }

    fn post_recv(&mut self, which: usize, inp: &mut Input) {
        let sel = inp.u8();
        let qi = usize::from(sel % 3);
        let mr = usize::from(sel / 3 % 3);
        let off = u64::from(inp.u16() % 4200);
        let len = u32::from(inp.u16() % 4200);
        let wr_id = self.next_wr;
        self.next_wr += 1;
        let s = self.side(which);
        let lkey = if sel & 0x80 != 0 {
            0xDEAD_BE00
        } else {
            s.mrs[mr].lkey
        };
        let qpn = s.qps[qi];
        s.note_dest(s.bases[mr] + off, u64::from(len) + 40, None);
        let wr = RecvWr {
            wr_id,
            sgl: vec![Sge {
                addr: s.bases[mr] + off,
                length: len,
                lkey,
            }],
        };
        if s.dev.post_recv(qpn, wr).is_ok() {
            s.posted.insert(
                wr_id,
                Posted {
                    qpn,
                    recv: true,
                    len: u64::from(len),
                    opcode: WcOpcode::Recv,
                },
            );
        }
    }

    fn poll(&mut self, which: usize) {
        let s = self.side(which);
        let cq = s.cq;
        let mut n = 0;
        while let Ok(Some(c)) = s.dev.poll_cq(cq) {
            n += 1;
            assert!(n <= CQ_DEPTH, "CQ yielded more than its depth");
            check_completion(s, &c);
        }
    }
}

/// Whether `piece` is `mem` (same allocation).
fn same_region(piece: &Arc<dyn RegionMemory>, mem: &Arc<AtomicMemory>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(piece), Arc::as_ptr(mem))
}

/// Every piece lies in a writable region, inside a destination a WRITE's RETH or a READ's SGE
/// named, one MTU long at an MTU multiple from its start, and for a WRITE past its first
/// packet (the one with the RETH: accepted before any plan). A READ may be planned from its
/// start: `plan_next` plans the FIRST response's slot, which a FIRST (its AETH makes it
/// another shape) never matches.
fn check_plan(rx: &Side, plan: &Placement) {
    assert!(plan.segments > 0 && plan.segments <= PLACE_BUF / plan.segment_size.max(1));
    assert_eq!(
        plan.segment_size,
        plan.header_len + plan.payload_len + 4,
        "{plan:?}"
    );
    assert_eq!(plan.qpn(), rx.qps[0], "only RC QPs are planned");
    let mtu = plan.payload_len as u64;
    for (k, p) in plan.pieces.iter().enumerate() {
        assert!(p.segment < plan.segments, "{plan:?}");
        assert!(
            k == 0 || plan.pieces[k - 1].segment < p.segment,
            "one piece a segment"
        );
        let region = (0..3)
            .find(|&i| same_region(&p.memory, &rx.mems[i]))
            .expect("a piece in a region of the receiver");
        assert_ne!(region, 1, "a piece in the region without write rights");
        let raw = p
            .memory
            .raw_parts()
            .expect("planned regions are addressable");
        assert!(p.offset + p.len <= raw.len, "{p:?} past the region");
        assert_eq!(p.len as u64, mtu, "single-SGE destinations: whole segments");
        let (off, len) = (p.offset as u64, p.len as u64);
        assert!(
            rx.place_dests
                .iter()
                .any(|&(i, start, n, write)| i == region
                    && off >= start + if write { mtu } else { 0 }
                    && (off - start) % mtu == 0
                    && off + len <= start + n),
            "{p:?} (region {region}) is not inside a WRITE's or READ's destination past its \
             first packet: {:?}",
            rx.place_dests
        );
    }
}

/// A placed delivery changed no region byte outside the plan's pieces and the destinations
/// packets or WRs could name.
fn check_untouched(rx: &Side, plan: &Placement, before: &[Vec<u8>]) {
    for (i, old) in before.iter().enumerate() {
        let new = rx.mems[i].to_vec();
        for (at, (a, b)) in old.iter().zip(&new).enumerate() {
            if a == b {
                continue;
            }
            let at = at as u64;
            let in_piece = plan.pieces.iter().any(|p| {
                same_region(&p.memory, &rx.mems[i])
                    && at >= p.offset as u64
                    && at < (p.offset + p.len) as u64
            });
            let in_dest = rx
                .dests
                .iter()
                .any(|&(r, start, n)| r == i && at >= start && at < start.saturating_add(n));
            assert!(
                in_piece || in_dest,
                "region {i} byte {at} changed outside every destination"
            );
        }
    }
}

/// What the kernel's scatter `recvmsg` does with the driver's scatter list for `plan`
/// ([`Placement::scatter_list`] over a `cap`-byte buffer): the datagram's bytes in order;
/// the buffer's bytes that went to regions are junk.
fn kernel_scatter(plan: &Placement, cap: usize, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0xEE; data.len()];
    let mut at = 0;
    for entry in plan.scatter_list(cap) {
        if at >= data.len() {
            break;
        }
        let n = match entry {
            Scatter::Buffer { offset, len } => {
                let n = len.min(data.len() - at);
                buf[offset..offset + n].copy_from_slice(&data[at..at + n]);
                n
            }
            Scatter::Piece(p) => {
                let n = p.len.min(data.len() - at);
                p.memory.write(p.offset, &data[at..at + n]);
                n
            }
            other => panic!("unknown scatter entry {other:?}"),
        };
        at += n;
    }
    assert_eq!(at, data.len(), "the iovecs hold the whole datagram");
    buf
}

fn check_completion(s: &mut Side, c: &Completion) {
    assert!(
        s.qps.contains(&c.qp_num),
        "completion for a foreign QP {c:?}"
    );
    let Some(p) = s.posted.remove(&c.wr_id) else {
        panic!("completion of a WR never posted or completed twice: {c:?}");
    };
    assert_eq!(p.qpn, c.qp_num, "completion on the wrong QP");
    if p.recv {
        assert!(
            matches!(c.opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm),
            "receive WR completed as {c:?}"
        );
        if c.status == WcStatus::Success && c.opcode == WcOpcode::Recv {
            // UD receives carry the 40-byte GRH in the buffer.
            assert!(
                u64::from(c.byte_len) <= p.len + 40,
                "received more than posted: {c:?}"
            );
        }
    } else {
        assert_eq!(
            c.opcode, p.opcode,
            "send completed with another opcode: {c:?}"
        );
        if c.status == WcStatus::Success && c.opcode == WcOpcode::RdmaRead {
            assert!(u64::from(c.byte_len) <= p.len);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let cfg = inp.u8();
    let mtu = [Mtu::M256, Mtu::M512, Mtu::M1024, Mtu::M4096][usize::from(cfg & 3)];
    let timeout = 1 + (cfg >> 2) % 8; // 8 µs .. 1 ms ACK timeouts
    let framed = cfg & 0x80 != 0;
    let mut a = make_side(Ipv4Addr::new(10, 0, 0, 1), 1, framed);
    let mut b = make_side(Ipv4Addr::new(10, 0, 0, 2), 2, framed);
    let (aq, bq) = (a.qps, b.qps);
    connect(&mut a, b.ip, bq, mtu, timeout);
    connect(&mut b, a.ip, aq, mtu, timeout);
    let readonly_before = a.mems[1].to_vec();
    let mut w = World {
        a,
        b,
        now: Instant::from_nanos(1_000_000_000),
        wire: [VecDeque::new(), VecDeque::new()],
        next_wr: 1,
        buf: vec![0u8; 4 * 4200],
        place: [
            PlaceMode::Off,
            PlaceMode::Peek,
            PlaceMode::Next,
            PlaceMode::Both,
        ][usize::from(cfg >> 5 & 3)],
        plan: Placement::default(),
        deliveries: 0,
        placed: 0,
    };
    let mut steps = 0;
    while !inp.0.is_empty() && steps < 4096 {
        steps += 1;
        let op = inp.u8();
        let dir = usize::from(op >> 7);
        match op & 0x7F {
            // Deliver the oldest packet unchanged.
            0..=23 => w.deliver_oldest(dir),
            // Deliver it mutated, resealed or not.
            24..=39 => {
                if let Some(mut p) = w.wire[dir].pop_front() {
                    let kind = inp.u8();
                    let at = usize::from(inp.u16());
                    let v = inp.u8();
                    match kind % 6 {
                        0 if !p.is_empty() => {
                            let i = at % p.len().min(40);
                            p[i] = v;
                        }
                        1 if !p.is_empty() => {
                            let i = at % p.len();
                            p[i] ^= v | 1;
                        }
                        2 => p.truncate(at % (p.len() + 1)),
                        3 => {
                            let extra = inp.bytes(usize::from(v)).to_vec();
                            let n = p.len().saturating_sub(4);
                            p.splice(n..n, extra);
                        }
                        4 if p.len() >= 12 => {
                            // PSN moved by a signed amount.
                            let psn = u32::from_be_bytes([0, p[9], p[10], p[11]]);
                            let d = u32::from(inp.u16()) | (u32::from(v) << 16);
                            let n = psn.wrapping_add(d) & 0xFF_FFFF;
                            p[9..12].copy_from_slice(&n.to_be_bytes()[1..]);
                        }
                        _ if !p.is_empty() => p[0] = v, // opcode
                        _ => {}
                    }
                    if kind & 0x80 == 0 {
                        w.seal(dir, &mut p);
                    }
                    let from = (kind & 0x40 != 0).then_some(Ipv4Addr::new(10, 0, 0, 9));
                    w.deliver(dir, &p, from);
                }
            }
            // A raw datagram, optionally aimed at a QP of the receiver and sealed.
            40..=47 => {
                let flags = inp.u8();
                let len = usize::from(inp.u16() % 4400);
                let mut p = inp.bytes(len).to_vec();
                if flags & 1 != 0 && p.len() >= 12 {
                    let target = if dir == 0 { w.b.qps } else { w.a.qps };
                    let qpn = target[usize::from(flags >> 1) % 3];
                    p[2] = 0xFF;
                    p[3] = 0xFF;
                    p[5..8].copy_from_slice(&qpn.to_be_bytes()[1..]);
                }
                if flags & 0x80 == 0 {
                    w.seal(dir, &mut p);
                }
                w.deliver(dir, &p, None);
            }
            // Duplicate the oldest packet (deliver a copy, keep it queued).
            48..=51 => {
                if let Some(p) = w.wire[dir].front().cloned() {
                    w.deliver(dir, &p, None);
                }
            }
            // Lose the oldest packet, or swap the two oldest (reordering).
            52..=59 => {
                if op & 1 == 0 {
                    w.wire[dir].pop_front();
                } else if w.wire[dir].len() >= 2 {
                    w.wire[dir].swap(0, 1);
                }
            }
            // Time passes: 1 µs .. ~4 s.
            60..=71 => {
                let t = u64::from(inp.u16());
                w.advance(t * t);
            }
            72..=95 => w.post_send(dir, &mut inp),
            96..=111 => w.post_recv(dir, &mut inp),
            112..=119 => {
                w.poll(dir);
            }
            // Move a QP of one side to ERR (flushes) — a local verb racing the network.
            120 => {
                let qi = usize::from(inp.u8() % 3);
                let s = w.side(dir);
                let qpn = s.qps[qi];
                let _ = s.dev.modify_qp(
                    qpn,
                    &QpAttr {
                        state: Some(QpState::Err),
                        ..QpAttr::default()
                    },
                );
            }
            _ => {
                for _ in 0..usize::from(inp.u8() % 64) {
                    w.deliver_oldest(dir);
                }
            }
        }
        w.pump();
        w.poll(0);
        w.poll(1);
    }
    assert_eq!(
        w.a.mems[1].to_vec(),
        readonly_before,
        "a region without write rights changed"
    );
    assert_eq!(w.a.dev.mr_count(), 3);
    let runs = EXECUTIONS.fetch_add(1, Relaxed) + 1;
    if w.placed > 0 {
        let n = PLACED_EXECUTIONS.fetch_add(1, Relaxed) + 1;
        if n.is_power_of_two() {
            eprintln!(
                "placement: {n} of {runs} executions reached handle_placed with a plan \
                 ({} planned deliveries)",
                PLACED_DELIVERIES.load(Relaxed)
            );
        }
    }
});

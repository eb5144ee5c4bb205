//! The device: the sans-IO endpoint that owns every verbs object and is driven with datagrams
//! and time (see the crate docs for the call contract).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use uroce_wire::{IcrcCheck, IcrcContext, Ipv4IdMode, PacketRepr, Psn, Transport};

use crate::cq::{Completion, CompletionQueue};
use crate::idmap::IdMap;
use crate::mr::{Access, MrKeys, MrTable, RegionMemory};
use crate::place::{self, Placement};
use crate::qp::{Qp, QpAttr, QpInit, QpState, QpType};
use crate::share::WindowShare;
use crate::srq::Srq;
use crate::wr::{RecvWr, SendWr};
use crate::{AhHandle, CqHandle, Error, Instant, PdHandle, Resource, SrqHandle};

/// Device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The local IP address packets are sent from and to.
    pub local_ip: IpAddr,
    /// UDP port used as our source port and the peers' destination port (4791; tests may
    /// change it).
    pub udp_port: u16,
    /// How to check the ICRC of received IPv4 packets, whose Identification a UDP socket
    /// cannot see. The default, `SolveBelow(128)`, accepts the IDs uroce peers send (0 for a
    /// lone packet, `i` for GSO segment `i`, at most 128 segments) at a false-accept chance of
    /// 2^-25;
    /// `Solve` also accepts rxe's arbitrary IDs at 2^-16; `Exact` only ID 0. Every packet
    /// accepted with a non-zero ID is counted in [`DeviceCounters::icrc_solved_id`].
    pub ipv4_id_mode: Ipv4IdMode,
    /// First QP number handed out (rxe starts at 17; 0 and 1 are special).
    pub first_qpn: u32,
    /// Last QP number handed out: QPNs come from `first_qpn..=last_qpn`, so a driver that
    /// shares one address among several engines gives each its own range (the engine does
    /// not care which bits mean what).
    pub last_qpn: u32,
    /// Most QPs.
    pub max_qp: usize,
    /// Most memory regions.
    pub max_mr: usize,
    /// Most CQs.
    pub max_cq: usize,
    /// Deepest CQ.
    pub max_cqe: usize,
    /// Deepest send or receive queue.
    pub max_qp_wr: u32,
    /// Most SGEs per WR.
    pub max_sge: u32,
    /// Most shared receive queues.
    pub max_srq: usize,
    /// Deepest shared receive queue (receive buffers one SRQ holds).
    pub max_srq_wr: u32,
    /// Most address handles.
    pub max_ah: usize,
    /// Largest `max_rd_atomic` / `max_dest_rd_atomic`.
    pub max_rd_atomic: u8,
    /// Most PSNs a requester keeps unacknowledged.
    pub max_unacked_psns: u32,
    /// A requester sets AckReq at least every this many packets (IBTA leaves it open; rxe 64).
    pub ack_req_interval: u32,
    /// Most packets in one GSO batch. 64 is what every kernel with `UDP_SEGMENT` takes; the
    /// uroce device sets its back end's limit (128 on kernels since 2024, probed).
    pub max_segments: usize,
    /// How long a responder may hold a positive ACK to SEND/WRITE (zero: send it at once).
    /// A held ACK leaves right after the QP's next request packet, in the same transmit
    /// (the application's reply to what it just received: one datagram instead of two on a
    /// ping-pong), or when the delay has passed; newer ACKs coalesce into it and keep its
    /// deadline, so no request waits longer than this for its ACK. IBTA allows coalesced
    /// ACKs (an ACK covers every earlier PSN); keep this far below the peers' local ACK
    /// timeout (4.096 µs × 2^timeout: 67 ms for the usual 14).
    pub ack_delay: core::time::Duration,
    /// Send each packet of a multi-packet RC RDMA WRITE (without immediate) as an RDMA WRITE
    /// ONLY with a RETH for its own part, instead of FIRST/MIDDLE/LAST. Every packet is then
    /// the same size, so a stream of WRITEs batches into full UDP GSO sends as SENDs do (a
    /// FIRST's RETH makes it 16 bytes longer than the MIDDLEs, which cut each message into two
    /// datagrams: 16 KiB WRITEs moved at half the rate of 16 KiB SENDs). The responder places
    /// the same bytes at the same addresses in the same PSN order and the requester completes
    /// the WR once; what differs is that the wire carries several messages (the responder's
    /// MSN counts them), and that a remote access error at packet k leaves packets 0..k
    /// written where a FIRST would have been refused whole (verbs leave the target undefined
    /// after an error either way). WRITE with immediate keeps one message: its responder
    /// completion reports the message's length. On by default; `false` frames as rxe and
    /// NICs do.
    pub split_writes: bool,
    /// Ask for a READ of a few packets with one READ request per packet (each answered by a
    /// READ RESPONSE ONLY) instead of one request answered by FIRST/MIDDLE/LAST. A response
    /// FIRST and LAST carry an AETH that its MIDDLEs do not, so a stream of multi-packet
    /// responses cut two UDP GSO sends per READ; ONLYs are all one size and fill them. Each
    /// request takes one of `max_rd_atomic`'s slots (IBTA §9.7.4.1.3 counts requests), so a
    /// READ is split only if it has at most [`crate::SPLIT_READ_MAX_PACKETS`] packets and a
    /// quarter of `max_rd_atomic` (four such READs in flight at least); others, and every READ
    /// on a QP with fewer slots, stay one request. The responder, rxe or a NIC, serves each
    /// request as any READ; the data, PSNs and completion are the READ's. On by default.
    pub split_reads: bool,
}

impl Config {
    /// Defaults for a device on `local_ip`.
    pub fn new(local_ip: IpAddr) -> Self {
        Config {
            local_ip,
            udp_port: uroce_wire::ROCE_UDP_PORT,
            // 128: the most GSO segments a uroce peer sends (`UDP_MAX_SEGMENTS` since 2024).
            ipv4_id_mode: Ipv4IdMode::SolveBelow(128),
            first_qpn: 17,
            last_qpn: 0xFF_FFFF,
            max_qp: 4096,
            max_mr: 65536,
            max_cq: 4096,
            max_cqe: 1 << 20,
            max_qp_wr: 16384,
            max_sge: 32,
            max_srq: 4096,
            max_srq_wr: 16384,
            max_ah: 65536,
            max_rd_atomic: 128,
            max_unacked_psns: 2048,
            ack_req_interval: 64,
            max_segments: 64,
            ack_delay: core::time::Duration::ZERO,
            split_writes: true,
            split_reads: true,
        }
    }
}

/// Device-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCounters {
    /// Datagrams handed in.
    pub rx_packets: u64,
    /// Bytes handed in.
    pub rx_bytes: u64,
    /// Packets handed out.
    pub tx_packets: u64,
    /// Bytes handed out.
    pub tx_bytes: u64,
    /// Datagrams (GSO batches count once) handed out.
    pub tx_datagrams: u64,
    /// Dropped: ICRC did not verify.
    pub icrc_drops: u64,
    /// Accepted only by solving for the IPv4 Identification.
    pub icrc_solved_id: u64,
    /// Dropped: not a valid transport packet (shorter than BTH + ICRC, unknown opcode,
    /// TVer other than 0, headers cut short, bad pad count, payload where none is allowed).
    pub malformed: u64,
    /// Dropped: no QP with that number.
    pub unknown_qp: u64,
    /// Dropped: P_Key other than the default.
    pub bad_pkey: u64,
    /// Dropped: opcode of another service than the QP's, or QP state that takes no packets.
    pub wrong_qp: u64,
    /// Dropped: source address differs from the connected QP's peer.
    pub wrong_source: u64,
    /// Completions lost to a full CQ.
    pub cq_overruns: u64,
    /// Packets accepted whose payload the kernel had placed where it belonged (zero-copy
    /// receive, [`Device::handle_placed`]): no copy in user space.
    pub rx_placed: u64,
    /// Placed packets that were not what the plan predicted (another message, a duplicate,
    /// a different opcode): their payload was copied out of the region and handled as usual.
    pub rx_place_misses: u64,
}

/// The device's limits, as `ibv_query_device` reports them (`struct ibv_device_attr`). Each is
/// enforced: a verb that would exceed one fails with [`Error::Limit`] naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceAttr {
    /// Most QPs.
    pub max_qp: u64,
    /// Most outstanding WRs of one send or receive queue.
    pub max_qp_wr: u32,
    /// Most SGEs of one WR.
    pub max_sge: u32,
    /// Most CQs.
    pub max_cq: u64,
    /// Most entries of one CQ.
    pub max_cqe: u64,
    /// Most memory regions.
    pub max_mr: u64,
    /// Most SRQs.
    pub max_srq: u64,
    /// Most receive WRs (buffers) of one SRQ.
    pub max_srq_wr: u32,
    /// Most SGEs of one SRQ receive WR.
    pub max_srq_sge: u32,
    /// Most address handles.
    pub max_ah: u64,
    /// Most outstanding READ/atomic requests a QP answers (`max_qp_rd_atom`).
    pub max_qp_rd_atom: u8,
    /// Most outstanding READ/atomic requests a QP initiates (`max_qp_init_rd_atom`).
    pub max_qp_init_rd_atom: u8,
}

/// How many objects of each kind exist now (the engine's table sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Protection domains.
    pub pds: usize,
    /// Memory regions.
    pub mrs: usize,
    /// Completion queues.
    pub cqs: usize,
    /// Completions waiting in all CQs.
    pub cqes: usize,
    /// Shared receive queues.
    pub srqs: usize,
    /// Address handles.
    pub ahs: usize,
    /// Queue pairs.
    pub qps: usize,
    /// QPs queued for transmission.
    pub ready: usize,
}

/// One datagram (or GSO batch) to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Bytes written into the buffer.
    pub len: usize,
    /// Set when `len` holds several packets of this size (the last may be shorter).
    pub segment_size: Option<usize>,
}

/// An address handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ah {
    pub pd: PdHandle,
    pub dst: SocketAddr,
}

/// What QP code may touch besides the QP itself.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub config: &'a Config,
    pub mrs: &'a mut MrTable,
    pub cqs: &'a mut IdMap<CompletionQueue>,
    pub srqs: &'a mut IdMap<Srq>,
    pub ahs: &'a IdMap<Ah>,
    pub counters: &'a mut DeviceCounters,
    /// Set when a completion was lost: the QP goes to error.
    pub overrun: bool,
    /// Asynchronous events raised, for [`Device::poll_async_event`].
    pub events: &'a mut VecDeque<AsyncEvent>,
    /// Where the kernel placed the payload of the packet being handled (its bytes in the
    /// packet are then not the payload): consumed by [`Ctx::put`].
    pub placed: Option<&'a [crate::place::Piece]>,
    /// Set when a completion made a CQ event pending ([`Device::poll_cq_event`]).
    pub cq_events: &'a mut bool,
}

impl Ctx<'_> {
    pub fn complete(&mut self, cq: CqHandle, c: Completion) {
        let Some(q) = self.cqs.get_mut(&cq.0) else {
            self.counters.cq_overruns += 1;
            self.overrun = true;
            return;
        };
        let was = q.is_overrun();
        let accepted = q.push(c);
        *self.cq_events |= q.event_pending();
        if !accepted {
            self.counters.cq_overruns += 1;
            self.overrun = true;
            if !was {
                // Once per CQ: it stays in error (IBTA §11.4.2.1; rxe: IB_EVENT_CQ_ERR).
                self.raise(AsyncEvent::CqErr(cq));
            }
        }
    }

    /// Queues an asynchronous event, dropping it when the queue is full (nobody reads them).
    pub fn raise(&mut self, e: AsyncEvent) {
        if self.events.len() < MAX_ASYNC_EVENTS {
            self.events.push_back(e);
        }
    }
}

/// Most asynchronous events kept for a driver that does not take them.
const MAX_ASYNC_EVENTS: usize = 1024;

/// An asynchronous event (`ibv_async_event`): an error the engine found outside any
/// completion's reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// The QP went to ERR by itself (a transport or local error, not `modify_qp`):
    /// `IBV_EVENT_QP_FATAL`.
    QpFatal(u32),
    /// The CQ overflowed and is in error: `IBV_EVENT_CQ_ERR`.
    CqErr(CqHandle),
}

/// A packet that did not fit the GSO batch it was built for (a WRITE's FIRST, whose RETH
/// makes it longer than the MIDDLEs before it; a READ response's LAST, whose AETH does), sent
/// first in the next datagram. Its buffer is kept between uses, so staging allocates nothing
/// in steady state.
#[derive(Debug, Default)]
struct Staged {
    /// Where the staged packet goes; `None`: nothing staged.
    dst: Option<SocketAddr>,
    /// The packet, unsealed (its ICRC depends on the datagram it ends up in).
    bytes: Vec<u8>,
    /// The QP that built it.
    qpn: u32,
    /// A timeout's probe: it goes alone.
    alone: bool,
}

/// The sans-IO RoCEv2 endpoint.
#[derive(Debug)]
pub struct Device {
    config: Config,
    next_pd: u32,
    pds: IdMap<()>,
    mrs: MrTable,
    cqs: IdMap<CompletionQueue>,
    next_cq: u32,
    srqs: IdMap<Srq>,
    next_srq: u32,
    ahs: IdMap<Ah>,
    next_ah: u32,
    qps: IdMap<Qp>,
    next_qpn: u32,
    ready: VecDeque<u32>,
    /// RC QPs with PSNs outstanding: they share `max_unacked_psns`.
    share: WindowShare,
    staged: Staged,
    counters: DeviceCounters,
    solver: uroce_wire::Ipv4IdSolver,
    /// Pseudo-header constants for sealing small packets.
    icrc: uroce_wire::IcrcCache,
    events: VecDeque<AsyncEvent>,
    /// Whether a CQ may have an event pending: the driver asks after every transmit, and
    /// without one nothing needs scanning every CQ.
    cq_events: bool,
    /// Where a placed payload is read (from its region) for the ICRC, a segment at a time.
    place_buf: Vec<u8>,
}

fn limit(resource: Resource, max: impl TryInto<u64>) -> Error {
    Error::Limit {
        resource,
        max: max.try_into().unwrap_or(u64::MAX),
    }
}

macro_rules! ctx {
    ($self:ident, $now:expr) => {
        Ctx {
            now: $now,
            config: &$self.config,
            mrs: &mut $self.mrs,
            cqs: &mut $self.cqs,
            srqs: &mut $self.srqs,
            ahs: &$self.ahs,
            counters: &mut $self.counters,
            overrun: false,
            events: &mut $self.events,
            placed: None,
            cq_events: &mut $self.cq_events,
        }
    };
}

impl Device {
    /// A device with `config`.
    pub fn new(mut config: Config) -> Self {
        // QPNs and key indices are 24 bits: a table filling that space would make the search
        // for a free number spin forever.
        config.max_qp = config.max_qp.min(0xFF_FFF0);
        config.max_mr = config.max_mr.min(0xFF_FFF0);
        let next_qpn = config.first_qpn;
        Device {
            config,
            next_pd: 0,
            pds: IdMap::default(),
            mrs: MrTable::default(),
            cqs: IdMap::default(),
            next_cq: 0,
            srqs: IdMap::default(),
            next_srq: 0,
            ahs: IdMap::default(),
            next_ah: 0,
            qps: IdMap::default(),
            next_qpn,
            ready: VecDeque::new(),
            share: WindowShare::default(),
            staged: Staged::default(),
            counters: DeviceCounters::default(),
            solver: uroce_wire::Ipv4IdSolver::default(),
            icrc: uroce_wire::IcrcCache::default(),
            events: VecDeque::new(),
            cq_events: false,
            place_buf: vec![0; 4096],
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Device counters.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// The device's limits (`ibv_query_device`).
    pub fn query_device(&self) -> DeviceAttr {
        let c = &self.config;
        DeviceAttr {
            max_qp: c.max_qp as u64,
            max_qp_wr: c.max_qp_wr,
            max_sge: c.max_sge,
            max_cq: c.max_cq as u64,
            max_cqe: c.max_cqe as u64,
            max_mr: c.max_mr as u64,
            max_srq: c.max_srq as u64,
            max_srq_wr: c.max_srq_wr,
            max_srq_sge: c.max_sge,
            max_ah: c.max_ah as u64,
            max_qp_rd_atom: c.max_rd_atomic,
            max_qp_init_rd_atom: c.max_rd_atomic,
        }
    }

    /// How many objects exist now.
    pub fn usage(&self) -> Usage {
        Usage {
            pds: self.pds.len(),
            mrs: self.mrs.len(),
            cqs: self.cqs.len(),
            cqes: self.cqs.values().map(CompletionQueue::len).sum(),
            srqs: self.srqs.len(),
            ahs: self.ahs.len(),
            qps: self.qps.len(),
            ready: self.ready.len(),
        }
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&mut self) -> PdHandle {
        self.next_pd += 1;
        self.pds.insert(self.next_pd, ());
        PdHandle(self.next_pd)
    }

    /// Frees a protection domain that no QP, MR, SRQ or AH uses.
    pub fn dealloc_pd(&mut self, pd: PdHandle) -> Result<(), Error> {
        if self.qps.values().any(|q| q.pd == pd)
            || self.srqs.values().any(|s| s.pd == pd)
            || self.ahs.values().any(|a| a.pd == pd)
        {
            return Err(Error::Busy("protection domain"));
        }
        self.pds
            .remove(&pd.0)
            .ok_or(Error::NotFound("protection domain"))
    }

    fn check_pd(&self, pd: PdHandle) -> Result<(), Error> {
        self.pds
            .get(&pd.0)
            .map(|_| ())
            .ok_or(Error::NotFound("protection domain"))
    }

    /// Registers `memory` as a region whose first byte has address `iova`.
    pub fn reg_mr(
        &mut self,
        pd: PdHandle,
        iova: u64,
        memory: Arc<dyn RegionMemory>,
        access: Access,
    ) -> Result<MrKeys, Error> {
        self.check_pd(pd)?;
        self.mrs
            .register(pd, iova, memory, access, self.config.max_mr)
    }

    /// Deregisters a region.
    pub fn dereg_mr(&mut self, lkey: u32) -> Result<(), Error> {
        self.mrs.deregister(lkey)
    }

    /// Number of registered regions.
    pub fn mr_count(&self) -> usize {
        self.mrs.len()
    }

    /// Creates a completion queue of `depth` entries.
    pub fn create_cq(&mut self, depth: usize) -> Result<CqHandle, Error> {
        if depth == 0 {
            return Err(Error::InvalidArgument("CQ depth 0"));
        }
        if depth > self.config.max_cqe {
            return Err(limit(Resource::CqEntries, self.config.max_cqe));
        }
        if self.cqs.len() >= self.config.max_cq {
            return Err(limit(Resource::CompletionQueues, self.config.max_cq));
        }
        self.next_cq += 1;
        self.cqs.insert(self.next_cq, CompletionQueue::new(depth));
        Ok(CqHandle(self.next_cq))
    }

    /// Destroys a CQ that no QP uses.
    pub fn destroy_cq(&mut self, cq: CqHandle) -> Result<(), Error> {
        if self
            .qps
            .values()
            .any(|q| q.send_cq == cq || q.recv_cq == cq)
        {
            return Err(Error::Busy("completion queue"));
        }
        self.cqs
            .remove(&cq.0)
            .map(|_| ())
            .ok_or(Error::NotFound("completion queue"))
    }

    /// Takes the oldest completion of `cq`.
    pub fn poll_cq(&mut self, cq: CqHandle) -> Result<Option<Completion>, Error> {
        self.cqs
            .get_mut(&cq.0)
            .ok_or(Error::NotFound("completion queue"))?
            .poll()
    }

    /// Arms `cq` for one event at its next (solicited) completion.
    pub fn req_notify_cq(&mut self, cq: CqHandle, solicited_only: bool) -> Result<(), Error> {
        self.cqs
            .get_mut(&cq.0)
            .ok_or(Error::NotFound("completion queue"))?
            .req_notify(solicited_only);
        Ok(())
    }

    /// Takes the oldest asynchronous event.
    pub fn poll_async_event(&mut self) -> Option<AsyncEvent> {
        self.events.pop_front()
    }

    /// Takes one completion event of an armed CQ whose condition was met.
    pub fn poll_cq_event(&mut self) -> Option<CqHandle> {
        if !self.cq_events {
            return None;
        }
        let e = self
            .cqs
            .iter_mut()
            .find_map(|(h, q)| q.take_event().then_some(CqHandle(*h)));
        // Others may still be pending after one is taken; none once a scan finds none.
        self.cq_events = e.is_some();
        e
    }

    /// Creates a shared receive queue.
    pub fn create_srq(
        &mut self,
        pd: PdHandle,
        max_wr: u32,
        max_sge: u32,
    ) -> Result<SrqHandle, Error> {
        self.check_pd(pd)?;
        if max_wr == 0 {
            return Err(Error::InvalidArgument("SRQ size 0"));
        }
        if max_wr > self.config.max_srq_wr {
            return Err(limit(Resource::SrqWorkRequests, self.config.max_srq_wr));
        }
        if max_sge > self.config.max_sge {
            return Err(limit(Resource::ScatterGatherEntries, self.config.max_sge));
        }
        if self.srqs.len() >= self.config.max_srq {
            return Err(limit(Resource::SharedReceiveQueues, self.config.max_srq));
        }
        self.next_srq += 1;
        self.srqs
            .insert(self.next_srq, Srq::new(pd, max_wr, max_sge));
        Ok(SrqHandle(self.next_srq))
    }

    /// Posts a receive WR to an SRQ.
    pub fn post_srq_recv(&mut self, srq: SrqHandle, wr: RecvWr) -> Result<(), Error> {
        let s = self
            .srqs
            .get_mut(&srq.0)
            .ok_or(Error::NotFound("shared receive queue"))?;
        if s.queue.len() >= s.max_wr as usize {
            return Err(Error::QueueFull("shared receive"));
        }
        if wr.sgl.len() > s.max_sge as usize {
            return Err(Error::InvalidArgument("too many SGEs"));
        }
        s.queue.push_back(crate::qp::RecvWqe { wr });
        Ok(())
    }

    /// Destroys an SRQ that no QP uses.
    pub fn destroy_srq(&mut self, srq: SrqHandle) -> Result<(), Error> {
        if self.qps.values().any(|q| q.srq == Some(srq)) {
            return Err(Error::Busy("shared receive queue"));
        }
        self.srqs
            .remove(&srq.0)
            .map(|_| ())
            .ok_or(Error::NotFound("shared receive queue"))
    }

    /// Creates an address handle for UD sends to `dest_ip`.
    pub fn create_ah(&mut self, pd: PdHandle, dest_ip: IpAddr) -> Result<AhHandle, Error> {
        self.check_pd(pd)?;
        if dest_ip.is_ipv4() != self.config.local_ip.is_ipv4() {
            return Err(Error::InvalidArgument(
                "address family differs from the device's",
            ));
        }
        if self.ahs.len() >= self.config.max_ah {
            return Err(limit(Resource::AddressHandles, self.config.max_ah));
        }
        self.next_ah += 1;
        self.ahs.insert(
            self.next_ah,
            Ah {
                pd,
                dst: SocketAddr::new(dest_ip, self.config.udp_port),
            },
        );
        Ok(AhHandle(self.next_ah))
    }

    /// Destroys an address handle.
    pub fn destroy_ah(&mut self, ah: AhHandle) -> Result<(), Error> {
        self.ahs
            .remove(&ah.0)
            .map(|_| ())
            .ok_or(Error::NotFound("address handle"))
    }

    /// Creates a QP in the RESET state and returns its number.
    pub fn create_qp(&mut self, init: QpInit) -> Result<u32, Error> {
        self.check_pd(init.pd)?;
        if self.qps.len() >= self.config.max_qp {
            return Err(limit(Resource::QueuePairs, self.config.max_qp));
        }
        for cq in [init.send_cq, init.recv_cq] {
            if !self.cqs.contains_key(&cq.0) {
                return Err(Error::NotFound("completion queue"));
            }
        }
        if let Some(s) = init.srq {
            let srq = self
                .srqs
                .get(&s.0)
                .ok_or(Error::NotFound("shared receive queue"))?;
            if srq.pd != init.pd {
                return Err(Error::InvalidArgument("SRQ in another protection domain"));
            }
        }
        let c = &init.cap;
        if c.max_send_wr > self.config.max_qp_wr || c.max_recv_wr > self.config.max_qp_wr {
            return Err(limit(Resource::QpWorkRequests, self.config.max_qp_wr));
        }
        if c.max_send_sge > self.config.max_sge || c.max_recv_sge > self.config.max_sge {
            return Err(limit(Resource::ScatterGatherEntries, self.config.max_sge));
        }
        // A steered engine's QPN range (its slot) can run out before max_qp does.
        let range = self.config.last_qpn.saturating_sub(self.config.first_qpn) + 1;
        let qpn = self
            .alloc_qpn()
            .ok_or_else(|| limit(Resource::QueuePairs, range))?;
        self.qps.insert(qpn, Qp::new(qpn, init));
        Ok(qpn)
    }

    /// The next free QPN of `first_qpn..=last_qpn` (0 and 1 never: SMI and GSI), cycling
    /// round the range so a destroyed QP's number is reused as late as possible.
    fn alloc_qpn(&mut self) -> Option<u32> {
        let first = self.config.first_qpn.clamp(2, 0xFF_FFFF);
        let last = self.config.last_qpn.min(0xFF_FFFF);
        if last < first {
            return None;
        }
        let span = last - first + 1;
        let start = self.next_qpn.clamp(first, last);
        (0..span)
            .map(|i| first + (start - first + i) % span)
            .find(|q| !self.qps.contains_key(q))
            .inspect(|&q| self.next_qpn = if q == last { first } else { q + 1 })
    }

    /// Changes a QP's state and attributes (`ibv_modify_qp`).
    pub fn modify_qp(&mut self, qpn: u32, attr: &QpAttr) -> Result<(), Error> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or(Error::NotFound("queue pair"))?;
        let port = self.config.udp_port;
        let mut ctx = ctx!(self, Instant::ZERO);
        let r = qp.modify(attr, port, &mut ctx);
        self.share.leave(qp);
        r?;
        Self::wake(&mut self.ready, qp);
        Ok(())
    }

    /// Destroys a QP; its outstanding WRs are dropped without completions, as `ibv_destroy_qp`.
    pub fn destroy_qp(&mut self, qpn: u32) -> Result<(), Error> {
        let qp = self.qps.remove(&qpn).ok_or(Error::NotFound("queue pair"))?;
        self.share.remove(&qp);
        Ok(())
    }

    /// A QP, for its state and counters.
    pub fn qp(&self, qpn: u32) -> Option<&Qp> {
        self.qps.get(&qpn)
    }

    /// The QPs, in no particular order.
    pub fn qps(&self) -> impl Iterator<Item = &Qp> {
        self.qps.values()
    }

    /// Number of QPs.
    pub fn qp_count(&self) -> usize {
        self.qps.len()
    }

    /// Posts a send WR (`ibv_post_send`).
    pub fn post_send(&mut self, now: Instant, qpn: u32, wr: SendWr) -> Result<(), Error> {
        self.post_send_batch(now, qpn, std::iter::once(wr))
    }

    /// Posts send WRs to one QP in order (`ibv_post_send` with a list), looking the QP up
    /// once. Stops at the first WR that fails and returns its error; the WRs before it stay
    /// posted, as verbs reports `bad_wr`.
    pub fn post_send_batch(
        &mut self,
        now: Instant,
        qpn: u32,
        wrs: impl IntoIterator<Item = SendWr>,
    ) -> Result<(), Error> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or(Error::NotFound("queue pair"))?;
        let mut result = Ok(());
        for wr in wrs {
            if let Some(ud) = &wr.ud {
                let Some(ah) = self.ahs.get(&ud.ah.0) else {
                    result = Err(Error::NotFound("address handle"));
                    break;
                };
                if ah.pd != qp.pd {
                    result = Err(Error::InvalidArgument(
                        "address handle in another protection domain",
                    ));
                    break;
                }
            }
            let mut ctx = ctx!(self, now);
            let r = qp.post_send(wr, &mut ctx);
            if ctx.overrun {
                let mut ctx = ctx!(self, now);
                qp.enter_error(&mut ctx);
                self.share.leave(qp);
            }
            if r.is_err() {
                result = r;
                break;
            }
        }
        Self::wake(&mut self.ready, qp);
        result
    }

    /// Posts a receive WR (`ibv_post_recv`).
    pub fn post_recv(&mut self, qpn: u32, wr: RecvWr) -> Result<(), Error> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or(Error::NotFound("queue pair"))?;
        let mut ctx = ctx!(self, Instant::ZERO);
        qp.post_recv(wr, &mut ctx)
    }

    fn wake(ready: &mut VecDeque<u32>, qp: &mut Qp) {
        if !qp.req.in_ready {
            qp.req.in_ready = true;
            ready.push_back(qp.qpn);
        }
    }

    /// Feeds one received UDP payload from `from` to local address `to`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: IpAddr, data: &[u8]) {
        self.receive(now, from, to, data, None);
    }

    /// Plans zero-copy receive of a datagram of `len` bytes from `from` in `segment_size`-byte
    /// GRO segments (`len` for a single packet), whose first packet begins with `head`
    /// (peeked): fills `plan` with where each full-size segment's payload goes and returns
    /// whether any was planned. Only the next expected PSN of an RC QP whose inbound SEND,
    /// WRITE or READ response is in progress, in regions with [`RegionMemory::raw_parts`],
    /// is planned ([`crate::place`] states the invariant). Receive the datagram as planned,
    /// then hand it to [`Self::handle_placed`].
    pub fn plan_placement(
        &self,
        from: SocketAddr,
        head: &[u8],
        segment_size: usize,
        len: usize,
        plan: &mut Placement,
    ) -> bool {
        plan.clear();
        let Some(b) = head.get(..uroce_wire::headers::BTH_LEN) else {
            return false;
        };
        let Ok(op) = uroce_wire::Opcode::try_from(b[0]) else {
            return false;
        };
        let Some(qp) = self.qps.get(&dest_qp(b)) else {
            return false;
        };
        if qp.attrs.dest.map(|d| d.ip()) != Some(from.ip()) {
            return false;
        }
        let psn = Psn::new(u32::from_be_bytes([0, b[9], b[10], b[11]]));
        place::plan(qp, op, psn, segment_size, len, plan)
    }

    /// Feeds a datagram received as `plan` says: `data` is the whole datagram, except that
    /// the payload of each planned segment lies in the plan's pieces instead. Every segment
    /// gets every check of [`Self::handle_datagram`] (the ICRC over the payload where it
    /// lies); one that is not the packet the plan predicted has its payload copied back out
    /// of the region first.
    ///
    /// `segment_size` is the datagram's real GRO segment size (its length for one packet).
    /// A datagram received on a plan made without peeking ([`Self::plan_next`]) may not be
    /// shaped as planned: then every planned piece is copied back into `data` first and the
    /// datagram is handled as a plain one.
    pub fn handle_placed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: IpAddr,
        data: &mut [u8],
        segment_size: usize,
        plan: &Placement,
    ) {
        let seg = plan.segment_size.max(1);
        if segment_size != seg && data.len() > plan.header_len {
            // Not the planned shape: put the datagram back together.
            for i in 0..plan.segments {
                self.counters.rx_place_misses += u64::from(i * seg < data.len());
                place::unplace(plan, i, data);
            }
            for chunk in data.chunks(segment_size.max(1)) {
                self.receive(now, from, to, chunk, None);
            }
            return;
        }
        for (i, chunk) in data.chunks_mut(seg).enumerate() {
            if i < plan.segments && chunk.len() != seg {
                // A shorter last segment where a full one was planned: part of it lies in
                // the region.
                self.counters.rx_place_misses += 1;
                place::unplace_chunk(plan, i, chunk);
            }
            if i < plan.segments && chunk.len() == seg {
                let pieces = plan.segment_pieces(i);
                let b = &chunk[..uroce_wire::headers::BTH_LEN];
                let psn = u32::from_be_bytes([0, b[9], b[10], b[11]]);
                let predicted = dest_qp(b) == plan.qpn
                    && uroce_wire::Opcode::try_from(b[0])
                        .is_ok_and(|op| place::placeable(op).is_some())
                    && Psn::new(psn) == Psn::new(plan.first_psn).add(i as u32);
                if predicted {
                    self.receive(now, from, to, chunk, Some(pieces));
                    continue;
                }
                self.counters.rx_place_misses += 1;
                place::unplace_chunk(plan, i, chunk);
            }
            self.receive(now, from, to, chunk, None);
        }
    }

    /// Plans the next datagram for QP `qpn` without peeking at it: as if it were up to
    /// `max_len` bytes of full-size packets from the QP's next expected PSN on (what a
    /// stream of MIDDLE packets looks like). The same invariant holds as for
    /// [`Self::plan_placement`]: whatever datagram then arrives, its bytes land only in the
    /// unwritten part of the message's checked destination, and [`Self::handle_placed`]
    /// copies back what was not the predicted packet.
    pub fn plan_next(&self, qpn: u32, max_len: usize, plan: &mut Placement) -> bool {
        plan.clear();
        self.qps
            .get(&qpn)
            .is_some_and(|qp| place::plan_next(qp, max_len, plan))
    }

    /// Whether an RC QP has an inbound message in progress whose payload could be placed,
    /// with at least [`place::PLACE_MIN_REMAINING`] bytes still to come, on a path MTU of at
    /// least [`place::PLACE_MIN_MTU`] (a driver receives with [`Self::plan_placement`] while
    /// this holds).
    pub fn placement_wanted(&self) -> bool {
        self.qps.values().any(place::inbound)
    }

    fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: IpAddr,
        data: &[u8],
        placed: Option<&[place::Piece]>,
    ) {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += data.len() as u64;
        let Some(icrc) = IcrcContext::between(from, SocketAddr::new(to, self.config.udp_port), 0)
        else {
            self.counters.malformed += 1;
            return;
        };
        // Too short to hold a BTH and an ICRC: not a transport packet at all, so it is counted
        // as malformed rather than as an ICRC failure (rxe's `rxe_udp_encap_recv` likewise
        // drops runts before the ICRC check).
        if data.len() < uroce_wire::headers::BTH_LEN + uroce_wire::ICRC_LEN {
            self.counters.malformed += 1;
            return;
        }
        let check = match placed {
            None => icrc.verify_with(data, self.config.ipv4_id_mode, &mut self.solver),
            Some(p) => place::verify_placed(
                &icrc,
                data,
                p,
                self.config.ipv4_id_mode,
                &mut self.solver,
                &mut self.place_buf,
            ),
        };
        match check {
            Ok(IcrcCheck::Valid) => {}
            Ok(IcrcCheck::SolvedIpv4Id(_)) => self.counters.icrc_solved_id += 1,
            Ok(_) | Err(_) => {
                self.counters.icrc_drops += 1;
                return;
            }
        }
        let Ok((repr, pkt)) = PacketRepr::parse_bytes(data) else {
            self.counters.malformed += 1;
            return;
        };
        // IBTA C9-42: only the default partition exists here (full and limited membership).
        if repr.bth.pkey & 0x7FFF != uroce_wire::DEFAULT_PKEY & 0x7FFF {
            self.counters.bad_pkey += 1;
            return;
        }
        let Some(qp) = self.qps.get_mut(&repr.bth.dest_qp) else {
            self.counters.unknown_qp += 1;
            return;
        };
        let service_ok = matches!(
            (qp.qp_type, pkt.info().transport),
            (QpType::Rc, Transport::Rc) | (QpType::Uc, Transport::Uc) | (QpType::Ud, Transport::Ud)
        );
        if !service_ok || !qp.can_receive() {
            self.counters.wrong_qp += 1;
            return;
        }
        if qp.qp_type != QpType::Ud && qp.attrs.dest.map(|d| d.ip()) != Some(from.ip()) {
            self.counters.wrong_source += 1;
            return;
        }
        qp.counters.rx_packets += 1;
        self.share.enter(&self.config, qp);
        let mut ctx = ctx!(self, now);
        ctx.placed = placed;
        qp.handle_packet(&repr, &pkt, from, &mut ctx);
        if ctx.overrun {
            let mut ctx = ctx!(self, now);
            qp.enter_error(&mut ctx);
        }
        self.share.leave(qp);
        // A request answered by a held ACK leaves nothing to send now: queued, the QP cost
        // the driver's next poll_transmit a lookup and an empty emit on every ping-pong
        // message. Its deadline (handle_timeout) or the reply's post wakes it.
        if !qp.only_holds_ack(&self.config, now) {
            Self::wake(&mut self.ready, qp);
        }
    }

    /// Fires expired timers (ACK timeouts, RNR waits).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .qps
            .values()
            .filter(|q| q.next_timeout().is_some_and(|t| t <= now))
            .map(|q| q.qpn)
            .collect();
        for qpn in due {
            if let Some(qp) = self.qps.get_mut(&qpn) {
                self.share.enter(&self.config, qp);
                let mut ctx = ctx!(self, now);
                qp.handle_timeout(&mut ctx);
                if ctx.overrun {
                    let mut ctx = ctx!(self, now);
                    qp.enter_error(&mut ctx);
                }
                self.share.leave(qp);
                Self::wake(&mut self.ready, qp);
            }
        }
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.qps.values().filter_map(Qp::next_timeout).min()
    }

    fn seal(&mut self, dst: SocketAddr, packet: &mut [u8], ipv4_id: u16) {
        let src = SocketAddr::new(self.config.local_ip, self.config.udp_port);
        // create_ah and modify_qp refuse mixed families, so `None` is unreachable in practice;
        // an unsealed packet would be dropped by the peer, never misdelivered.
        if let Some(ctx) = IcrcContext::between(src, dst, ipv4_id) {
            ctx.seal_with(packet, &mut self.icrc);
        }
    }

    /// Writes the next datagram (or GSO batch) into `buf`. `buf` should hold at least one
    /// packet of the largest path MTU in use plus 64 bytes of headers.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        // A staged packet opens the next batch, which its QP's next packets of the same
        // size join: a READ response's LAST and the next response's FIRST (both carry an
        // AETH) share a datagram.
        let mut opened = None;
        if let Some(dst) = self.staged.dst {
            let len = self.staged.bytes.len();
            if len > buf.len() {
                return None;
            }
            self.staged.dst = None;
            buf[..len].copy_from_slice(&self.staged.bytes);
            let qpn = self.staged.qpn;
            let ready = self.qps.get(&qpn).is_some_and(|q| q.req.in_ready);
            if self.staged.alone || !ready {
                self.seal(dst, &mut buf[..len], 0);
                self.count_tx(1, len);
                return Some(Transmit {
                    dst,
                    len,
                    segment_size: None,
                });
            }
            self.ready.retain(|&q| q != qpn);
            opened = Some((qpn, (dst, dest_qp(&buf[..len])), len));
        }
        loop {
            let (qpn, first) = match opened.take() {
                Some((qpn, d, len)) => (qpn, Some((d, len))),
                None => (self.ready.pop_front()?, None),
            };
            let Some(qp) = self.qps.get_mut(&qpn) else {
                continue;
            };
            qp.req.in_ready = false;
            self.share.enter(&self.config, qp);
            let mut ctx = ctx!(self, now);
            // The batch: `n` packets, all `seg` bytes but a shorter last one, `off` bytes in
            // all (no list of sizes: nothing is allocated per batch).
            let (mut off, mut n, mut seg) = (0, 0, 0);
            let mut dst = None;
            if let Some((d, len)) = first {
                (dst, off, n, seg) = (Some(d), len, 1, len);
            }
            while n < self.config.max_segments {
                let Some((len, d)) = qp.emit(&mut buf[off..], &mut ctx) else {
                    break;
                };
                // A batch never spans destination QPs (a UD QP may send to several on one
                // host): a GSO datagram is steered to one socket as a whole by the receiving
                // kernel, which picks it by the first packet's DestQP (docs/ARCHITECTURE.md).
                let d = (d, dest_qp(&buf[off..off + len]));
                // A timeout's probe goes alone (each copy): it repeats a PSN, and a receiver
                // plans zero-copy placement of a datagram's segments as consecutive PSNs from
                // the first.
                let alone = std::mem::take(&mut qp.req.probe_emitted);
                match dst {
                    None => {
                        dst = Some(d);
                        seg = len;
                        n = 1;
                        off += len;
                        if alone {
                            break;
                        }
                    }
                    Some(d0) if !alone && d0 == d && len == seg => {
                        n += 1;
                        off += len;
                    }
                    Some(d0) if !alone && d0 == d && len < seg => {
                        n += 1;
                        off += len;
                        break;
                    }
                    _ => {
                        // Larger than the batch's segments, for another peer, or a probe:
                        // send it next.
                        self.staged.dst = Some(d.0);
                        self.staged.qpn = qpn;
                        self.staged.alone = alone;
                        self.staged.bytes.clear();
                        self.staged.bytes.extend_from_slice(&buf[off..off + len]);
                        break;
                    }
                }
            }
            let overrun = ctx.overrun;
            if overrun {
                let mut ctx = ctx!(self, now);
                qp.enter_error(&mut ctx);
            }
            self.share.leave(qp);
            // Re-queue only a QP that made progress, so a blocked QP cannot spin this loop.
            let more = n > 0 && (qp.has_output(&self.config) || self.staged.dst.is_some());
            if more {
                Self::wake(&mut self.ready, qp);
            }
            let Some((dst, _)) = dst else { continue };
            let mut at = 0;
            for i in 0..n {
                let len = seg.min(off - at);
                let id = if n > 1 { i as u16 } else { 0 };
                self.seal(dst, &mut buf[at..at + len], id);
                at += len;
            }
            self.count_tx(n, off);
            return Some(Transmit {
                dst,
                len: off,
                segment_size: (n > 1).then_some(seg),
            });
        }
    }

    fn count_tx(&mut self, packets: usize, bytes: usize) {
        self.counters.tx_packets += packets as u64;
        self.counters.tx_bytes += bytes as u64;
        self.counters.tx_datagrams += 1;
    }

    /// Whether any QP has something to send now.
    pub fn has_transmit(&self) -> bool {
        self.staged.dst.is_some() || !self.ready.is_empty()
    }

    /// The QP state, if the QP exists.
    pub fn qp_state(&self, qpn: u32) -> Option<QpState> {
        self.qps.get(&qpn).map(Qp::state)
    }
}

/// The BTH DestQP of a packet the engine built (bytes 4..8, low 24 bits; IBTA 9.2).
fn dest_qp(packet: &[u8]) -> u32 {
    packet
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([0, b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp_in(dev: &mut Device) -> Result<u32, Error> {
        let pd = dev.alloc_pd();
        let cq = dev.create_cq(4).expect("cq");
        dev.create_qp(QpInit {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: crate::qp::QpCap::default(),
            sq_sig_all: false,
        })
    }

    #[test]
    fn qpns_come_from_the_configured_range_and_cycle_within_it() {
        let mut cfg = Config::new("127.0.0.1".parse().expect("ip"));
        cfg.first_qpn = 0x03_0011;
        cfg.last_qpn = 0x03_0013;
        let mut dev = Device::new(cfg);
        let got: Vec<u32> = (0..3).map(|_| qp_in(&mut dev).expect("qp")).collect();
        assert_eq!(got, [0x03_0011, 0x03_0012, 0x03_0013]);
        assert!(matches!(
            qp_in(&mut dev),
            Err(Error::Limit {
                resource: Resource::QueuePairs,
                max: 3
            })
        ));
        dev.destroy_qp(0x03_0012).expect("destroy");
        assert_eq!(qp_in(&mut dev).expect("reuse"), 0x03_0012);
    }

    #[test]
    fn every_pending_cq_event_is_returned_once() {
        let mut dev = Device::new(Config::new("127.0.0.1".parse().expect("ip")));
        let (c1, c2, c3) = (
            dev.create_cq(4).expect("cq"),
            dev.create_cq(4).expect("cq"),
            dev.create_cq(4).expect("cq"),
        );
        assert_eq!(dev.poll_cq_event(), None);
        dev.req_notify_cq(c1, false).expect("arm");
        dev.req_notify_cq(c2, false).expect("arm");
        let done = Completion::new(1, crate::WcStatus::Success, crate::WcOpcode::Send, 17);
        let mut ctx = ctx!(dev, Instant::ZERO);
        for cq in [c1, c2, c3] {
            ctx.complete(cq, done);
        }
        let mut got = vec![
            dev.poll_cq_event().expect("first"),
            dev.poll_cq_event().expect("second"),
        ];
        got.sort();
        assert_eq!(got, [c1, c2]);
        assert_eq!(
            dev.poll_cq_event(),
            None,
            "one event per arm; c3 was not armed"
        );
        dev.req_notify_cq(c3, false).expect("arm");
        ctx!(dev, Instant::ZERO).complete(c3, done);
        assert_eq!(dev.poll_cq_event(), Some(c3));
        assert_eq!(dev.poll_cq_event(), None);
    }

    #[test]
    fn dest_qp_reads_the_low_24_bits_of_bth_word_1() {
        assert_eq!(
            dest_qp(&[0x04, 0, 0xff, 0xff, 0xAA, 0x12, 0x34, 0x56]),
            0x12_3456
        );
        assert_eq!(dest_qp(&[0; 3]), 0);
    }
}

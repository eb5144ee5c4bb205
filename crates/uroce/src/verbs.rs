//! The verbs objects of the safe API. Each holds the device's shared state, so it stays valid
//! for as long as the application keeps it; dropping it destroys the engine object.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use uroce_proto::{
    Access, AhHandle, Completion, CqHandle, MrKeys, PdHandle, QpAttr, QpCap, QpCounters, QpInit,
    QpState, QpType, RecvWr, RegionMemory, SendWr, Sge, SrqHandle,
};

use crate::device::Shared;
use crate::Result;

/// A protection domain.
pub struct ProtectionDomain {
    pub(crate) shared: Arc<Shared>,
    pub(crate) h: PdHandle,
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProtectionDomain({})", self.h.0)
    }
}

impl ProtectionDomain {
    /// Registers `len` bytes of new, zeroed memory at address `iova` (the address peers and SGEs
    /// use) with `access` rights.
    pub fn reg_mr(&self, iova: u64, len: usize, access: Access) -> Result<MemoryRegion> {
        self.reg_memory(iova, crate::driver::region::Region::zeroed(len), access)
    }

    /// Registers memory the caller provides (the C ABI crate's view of a C program's buffer)
    /// at address `iova`, with `access` rights.
    pub fn reg_memory(
        &self,
        iova: u64,
        mem: Arc<dyn RegionMemory>,
        access: Access,
    ) -> Result<MemoryRegion> {
        let len = mem.len();
        let keys = self
            .shared
            .lock()
            .eng
            .reg_mr(self.h, iova, mem.clone(), access)?;
        Ok(MemoryRegion {
            shared: self.shared.clone(),
            mem,
            keys,
            iova,
            len,
        })
    }

    /// Creates a queue pair.
    pub fn create_qp(
        &self,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        cap: QpCap,
    ) -> Result<QueuePair> {
        self.create_qp_sig(qp_type, send_cq, recv_cq, srq, cap, false)
    }

    /// Creates a queue pair; `sq_sig_all` makes every send WR signalled (`ibv_qp_init_attr`).
    pub fn create_qp_sig(
        &self,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        cap: QpCap,
        sq_sig_all: bool,
    ) -> Result<QueuePair> {
        let init = QpInit {
            qp_type,
            pd: self.h,
            send_cq: send_cq.h,
            recv_cq: recv_cq.h,
            srq: srq.map(|s| s.h),
            cap,
            sq_sig_all,
        };
        let qpn = self.shared.lock().eng.create_qp(init)?;
        Ok(QueuePair {
            shared: self.shared.clone(),
            qpn,
            qp_type,
        })
    }

    /// Creates a shared receive queue.
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<SharedReceiveQueue> {
        let h = self.shared.lock().eng.create_srq(self.h, max_wr, max_sge)?;
        Ok(SharedReceiveQueue {
            shared: self.shared.clone(),
            h,
        })
    }

    /// Creates an address handle for UD sends to `dest`.
    pub fn create_ah(&self, dest: IpAddr) -> Result<AddressHandle> {
        let h = self.shared.lock().eng.create_ah(self.h, dest)?;
        Ok(AddressHandle {
            shared: self.shared.clone(),
            h,
        })
    }
}

/// A registered memory region whose bytes the engine and remote peers may read and write at any
/// time. The bytes are atomic words ([`uroce_proto::AtomicMemory`], bulk copies by the CPU's
/// string move: `driver/region.rs`), so the application reads and writes
/// them by copy (`read`/`write`): concurrent remote access can be observed half done, never
/// cause undefined behaviour. Completions tell when data is whole.
pub struct MemoryRegion {
    shared: Arc<Shared>,
    mem: Arc<dyn RegionMemory>,
    keys: MrKeys,
    iova: u64,
    len: usize,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemoryRegion(lkey {:#x}, {} B at {:#x})",
            self.keys.lkey, self.len, self.iova
        )
    }
}

impl MemoryRegion {
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.keys.lkey
    }
    /// Remote key, to give to peers.
    pub fn rkey(&self) -> u32 {
        self.keys.rkey
    }
    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.iova
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// An SGE for `len` bytes at `offset`.
    pub fn sge(&self, offset: u64, len: u32) -> Sge {
        Sge {
            addr: self.iova + offset,
            length: len,
            lkey: self.keys.lkey,
        }
    }
    /// Copies bytes out. Panics if the range is outside the region (a caller bug, not input).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset + dst.len() <= self.len, "read outside the region");
        self.mem.read(offset, dst);
    }
    /// Copies bytes in. Panics if the range is outside the region.
    pub fn write(&self, offset: usize, src: &[u8]) {
        assert!(offset + src.len() <= self.len, "write outside the region");
        self.mem.write(offset, src);
    }
    /// The whole contents.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.mem.read(0, &mut v);
        v
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        let _ = self.shared.lock().eng.dereg_mr(self.keys.lkey);
    }
}

/// A completion queue.
pub struct CompletionQueue {
    pub(crate) shared: Arc<Shared>,
    pub(crate) h: CqHandle,
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompletionQueue({})", self.h.0)
    }
}

impl CompletionQueue {
    /// Takes up to `max` completions (in polled mode this also drives progress).
    pub fn poll(&self, max: usize) -> Result<Vec<Completion>> {
        let mut out = Vec::new();
        self.poll_into(max, &mut out)?;
        Ok(out)
    }

    /// [`Self::poll`] appending to `out`: returns how many it appended. A caller that reuses
    /// `out` allocates nothing per poll (a busy-polled ping-pong's completion otherwise
    /// costs an allocation and a free between its arrival and the reply).
    pub fn poll_into(&self, max: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let start = out.len();
        let take = |g: &mut crate::device::Inner, out: &mut Vec<Completion>| -> Result<()> {
            while out.len() - start < max {
                match g.eng.poll_cq(self.h)? {
                    Some(c) => out.push(c),
                    None => break,
                }
            }
            Ok(())
        };
        if self.shared.polled {
            // One lock for the whole poll: take, send what waits (a post from another thread
            // already sent its own), receive, and return what this poll's receive completed
            // now, not one poll (a receive syscall) later.
            let (mut g, now) = self.shared.lock_now();
            take(&mut g, out)?;
            if g.eng.has_transmit() {
                g.transmit(now);
            }
            g.pump(now);
            if out.len() == start {
                take(&mut g, out)?;
            }
        } else {
            // The progress thread does the I/O; polling only takes the lock briefly, so a
            // spinning application does not starve it.
            // It does not receive either: the io_uring back end's multishot receive posts its
            // completions from the task that armed it, which must stay the progress thread
            // (a busy application thread, descheduled, would delay every packet).
            take(&mut self.shared.lock(), out)?;
        }
        Ok(out.len() - start)
    }

    /// Polls until `n` completions arrived or `timeout` passed (busy-polls in polled mode,
    /// sleeps briefly between polls otherwise).
    pub fn wait(&self, n: usize, timeout: Duration) -> Result<Vec<Completion>> {
        let end = std::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && std::time::Instant::now() < end {
            got.extend(self.poll(n - got.len())?);
            if got.len() < n && !self.shared.polled {
                std::thread::yield_now();
            }
        }
        Ok(got)
    }

    /// Asks for one event on the CQ's channel at the next (solicited) completion.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        Ok(self
            .shared
            .lock()
            .eng
            .req_notify_cq(self.h, solicited_only)?)
    }

    /// The CQ's number, as reported by [`CompletionChannel::get_event`].
    pub fn id(&self) -> u32 {
        self.h.0
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        let _ = g.eng.destroy_cq(self.h);
        g.channels.remove(&self.h.0);
    }
}

pub(crate) struct ChannelShared {
    fd: EventFd,
    pending: Mutex<Vec<u32>>,
}

impl ChannelShared {
    pub(crate) fn notify(&self, cq: u32) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cq);
        let _ = self.fd.write(1);
    }
}

/// A completion channel: CQ events delivered through a file descriptor the application can put
/// in poll/epoll (`ibv_comp_channel`).
pub struct CompletionChannel {
    pub(crate) shared: Arc<ChannelShared>,
}

impl std::fmt::Debug for CompletionChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompletionChannel")
    }
}

impl CompletionChannel {
    /// A new channel.
    pub fn new() -> Result<Self> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(CompletionChannel {
            shared: Arc::new(ChannelShared {
                fd,
                pending: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The descriptor that polls readable when an event is pending.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }

    /// Waits up to `timeout` for an event; returns the CQ's id.
    pub fn get_event(&self, timeout: Duration) -> Result<Option<u32>> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(cq) = {
                let mut p = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (!p.is_empty()).then(|| p.remove(0))
            } {
                let _ = self.shared.fd.read();
                return Ok(Some(cq));
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = left.as_millis().clamp(1, 1000) as u16;
            let mut fds = [PollFd::new(self.shared.fd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(ms))?;
        }
    }
}

/// A shared receive queue.
pub struct SharedReceiveQueue {
    shared: Arc<Shared>,
    h: SrqHandle,
}

impl std::fmt::Debug for SharedReceiveQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedReceiveQueue({})", self.h.0)
    }
}

impl SharedReceiveQueue {
    /// Posts a receive WR.
    pub fn post_recv(&self, wr: RecvWr) -> Result<()> {
        Ok(self.shared.lock().eng.post_srq_recv(self.h, wr)?)
    }

    /// Posts several receive WRs in order under one lock of the engine, as
    /// [`QueuePair::post_recv_batch`] does.
    pub fn post_recv_batch(&self, wrs: impl IntoIterator<Item = RecvWr>) -> Result<()> {
        let mut g = self.shared.lock();
        for wr in wrs {
            g.eng.post_srq_recv(self.h, wr)?;
        }
        Ok(())
    }
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        let _ = self.shared.lock().eng.destroy_srq(self.h);
    }
}

/// An address handle (UD destination).
pub struct AddressHandle {
    shared: Arc<Shared>,
    h: AhHandle,
}

impl std::fmt::Debug for AddressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AddressHandle({})", self.h.0)
    }
}

impl AddressHandle {
    /// The engine handle, for [`uroce_proto::UdDest`].
    pub fn handle(&self) -> AhHandle {
        self.h
    }
}

impl Drop for AddressHandle {
    fn drop(&mut self) {
        let _ = self.shared.lock().eng.destroy_ah(self.h);
    }
}

/// What a connected QP needs to know about its peer, and the transport options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Peer address.
    pub dest_ip: IpAddr,
    /// Peer QP number.
    pub dest_qpn: u32,
    /// The peer's first send PSN (our first expected receive PSN).
    pub rq_psn: u32,
    /// Our first send PSN.
    pub sq_psn: u32,
    /// Path MTU.
    pub mtu: uroce_proto::Mtu,
    /// Remote rights granted to the peer.
    pub access: Access,
    /// READ/atomic depth both ways.
    pub rd_atomic: u8,
    /// Local ACK timeout exponent (14 ≈ 67 ms).
    pub timeout: u8,
    /// Retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = infinite).
    pub rnr_retry: u8,
    /// RNR timer code asked of peers (12 = 0.64 ms).
    pub min_rnr_timer: u8,
}

impl Connect {
    /// Defaults as rdma-core's pingpong examples use them.
    pub fn new(dest_ip: IpAddr, dest_qpn: u32, rq_psn: u32, sq_psn: u32) -> Self {
        Connect {
            dest_ip,
            dest_qpn,
            rq_psn,
            sq_psn,
            mtu: uroce_proto::Mtu::M4096,
            access: Access::LOCAL_WRITE
                | Access::REMOTE_WRITE
                | Access::REMOTE_READ
                | Access::REMOTE_ATOMIC,
            rd_atomic: 16,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
        }
    }
}

/// A queue pair.
pub struct QueuePair {
    shared: Arc<Shared>,
    qpn: u32,
    qp_type: QpType,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueuePair({:#x})", self.qpn)
    }
}

impl QueuePair {
    /// QP number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// Service type.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// Changes state and attributes (`ibv_modify_qp`).
    pub fn modify(&self, attr: &QpAttr) -> Result<()> {
        self.shared.with(|g, _| g.eng.modify_qp(self.qpn, attr))?;
        Ok(())
    }

    /// RESET → INIT → RTR → RTS for a connected (RC/UC) QP.
    pub fn connect(&self, c: &Connect) -> Result<()> {
        self.modify(&QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port: Some(1),
            access: Some(c.access),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(c.mtu),
            dest_ip: Some(c.dest_ip),
            dest_qpn: Some(c.dest_qpn),
            rq_psn: Some(c.rq_psn),
            max_dest_rd_atomic: Some(c.rd_atomic),
            min_rnr_timer: Some(c.min_rnr_timer),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(c.sq_psn),
            timeout: Some(c.timeout),
            retry_cnt: Some(c.retry_cnt),
            rnr_retry: Some(c.rnr_retry),
            max_rd_atomic: Some(c.rd_atomic),
            ..QpAttr::default()
        })
    }

    /// RESET → INIT → RTR → RTS for a UD QP with `qkey`.
    pub fn ud_ready(&self, qkey: u32, sq_psn: u32) -> Result<()> {
        self.modify(&QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port: Some(1),
            qkey: Some(qkey),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(sq_psn),
            ..QpAttr::default()
        })
    }

    /// Posts a send WR and sends what is ready from this thread.
    pub fn post_send(&self, wr: SendWr) -> Result<()> {
        self.shared
            .with(|g, now| g.eng.post_send(now, self.qpn, wr))?;
        Ok(())
    }

    /// Posts several send WRs, then sends once (batched submission).
    pub fn post_send_batch(&self, wrs: impl IntoIterator<Item = SendWr>) -> Result<()> {
        self.shared
            .with(|g, now| -> Result<()> { Ok(g.eng.post_send_batch(now, self.qpn, wrs)?) })
    }

    /// Posts a receive WR.
    pub fn post_recv(&self, wr: RecvWr) -> Result<()> {
        Ok(self.shared.lock().eng.post_recv(self.qpn, wr)?)
    }

    /// Posts several receive WRs in order under one lock of the engine (one `ibv_post_recv`
    /// call with a chain): a receiver reposting a batch of completions does not queue for
    /// the lock once per WR behind a busy progress thread. Stops at the first WR that fails
    /// and returns its error; the WRs before it stay posted, as verbs reports `bad_wr`.
    pub fn post_recv_batch(&self, wrs: impl IntoIterator<Item = RecvWr>) -> Result<()> {
        let mut g = self.shared.lock();
        for wr in wrs {
            g.eng.post_recv(self.qpn, wr)?;
        }
        Ok(())
    }

    /// Current state.
    pub fn state(&self) -> Option<QpState> {
        self.shared.lock().eng.qp_state(self.qpn)
    }

    /// Counters.
    pub fn counters(&self) -> Option<QpCounters> {
        self.shared.lock().eng.qp(self.qpn).map(|q| q.counters())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let _ = self.shared.lock().eng.destroy_qp(self.qpn);
    }
}

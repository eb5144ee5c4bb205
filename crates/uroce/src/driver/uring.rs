//! The io_uring back end: one ring per device.
//!
//! Receiving: one multishot `RECVMSG` over a ring of provided buffers (16 × 64 KiB plus room
//! for the `io_uring_recvmsg_out` header, the source address and the control messages), on a
//! socket with UDP_GRO, so one completion carries a GRO super-buffer of up to 64 KiB that is
//! split by its `UDP_GRO` segment size. A buffer goes back to the ring as soon as its datagrams
//! were handed to the engine; a completion without `IORING_CQE_F_MORE` (the ring ran dry:
//! `ENOBUFS`, or a cancellation) re-arms the receive.
//!
//! Sending: the engine builds each datagram or GSO batch straight in one of 32 send buffers
//! owned by the back end ([`Backend::tx_buffer`]; a `SENDMSG` reads its buffer, address, iovec
//! and control message until its completion, so they must outlive the call), queued as a
//! `SENDMSG` with a `UDP_SEGMENT` control message for a batch, and submitted together in
//! [`Backend::flush`]. When every buffer is in flight,
//! the sender submits and waits for a completion. (Registered buffers would not help here: a
//! plain `SENDMSG` copies the data into the socket buffer either way.) `SENDMSG_ZC` is an
//! option only the raw probe uses (`raw.rs`): a slot is then freed by the send's notification.
//!
//! Start-up probes the kernel: the ring is set up with `SUBMIT_ALL` where the kernel knows it,
//! `SENDMSG`/`RECVMSG` must be supported (else [`UringBackend::new`] fails and the device uses
//! the syscall back end), and a buffer ring plus a multishot `RECVMSG` are tried (armed and
//! cancelled); without them the back end receives with `recvmsg` syscalls, and says so once.
//!
//! `SQPOLL` ([`Options::sq_poll`], `DeviceConfig::sq_poll`, off by default): a kernel thread
//! takes the submissions, so the kernel's work of a send (copying the datagrams into socket
//! buffers, the UDP and IP stack, veth) runs on another CPU than the progress thread that
//! builds the next batch. A bulk sender is CPU-bound on one thread, most of it that kernel
//! work (docs/perf/JOURNAL.md, "A kernel thread for the sends"). The thread polls the ring
//! for its idle time after each submission, and that polling is CPU time the process pays
//! for; a receiving device gains nothing from it (measured slower). Submitting then only
//! publishes the ring's tail, and a syscall is made only to wake a thread that went to
//! sleep. Sends stay in order: the one kernel thread issues them as queued.
//!
//! A send thread ([`Options::tx_thread`], `DeviceConfig::tx_thread`, off by default;
//! `tx_thread.rs`) does the same from user space: the queued slots go to a thread of the back
//! end's own instead of the ring, and come back with their results through `reap`. It sleeps
//! when idle instead of polling, and `SQPOLL` is then not set up.
//!
//! `COOP_TASKRUN` is set up where the kernel has it (5.19), except with `SQPOLL`, whose
//! kernel thread runs that work itself. Each datagram for the multishot receive queues
//! completion work to the thread that armed the receive. By default the kernel interrupts
//! that thread when it is running and its list was empty: an inter-processor interrupt, a VM
//! exit on a guest, and on a veth paid by the sending CPU, which delivers the datagram in its
//! softirq. Under `COOP_TASKRUN` the work waits for the thread's next entry into the kernel
//! (a submission, or the `poll` it sleeps in: a sleeping thread is still woken at once). For
//! 4 KiB WRITEs at path MTU 1024 (two datagrams per message) those wake-ups were 26 % of the
//! sender's CPU samples (docs/perf/JOURNAL.md, "Completion work without interrupts").
//!
//! So only the thread that will run that work arms receives: a device with a progress thread
//! reserves them for it at open ([`Backend::set_receive_owner`], [`RxOwner`]), and the
//! thread claims them when it starts. Another thread (an application's
//! [`crate::Device::progress`], steering set-up before the thread starts) receives with
//! `recvmsg` syscalls and leaves the re-arming to the owner ([`Backend::rx_pending`]); had it
//! armed and then spun in user space, every datagram would wait for its next interrupt.
//! Application threads still submit their own sends. A UDP send completes while it is
//! submitted; only one that finds the socket's send buffer full waits for `POLLOUT` and is
//! retried by completion work on its submitting thread: at that thread's next system call,
//! sleep or interrupt (at most a timer tick later), and RC retransmits from the progress
//! thread meanwhile. Between namespaces over a veth and on loopback the buffer does not
//! fill: each skb's charge is released as it leaves the sending device (`skb_orphan`).
//! `SINGLE_ISSUER`/`DEFER_TASKRUN` are not used: several threads submit (a second
//! submitter would get `EEXIST`), since a device may be shared between threads. The multishot
//! receive is (re-)armed from [`Backend::recv_ready`]. A busy-polled device
//! ([`Backend::set_busy_poll`]) never arms it and receives with `recvmsg` syscalls: a
//! thread that never leaves user space gets its completion work only after an interrupt. It
//! also sends with syscalls from the send buffers (measured faster for one datagram at a time
//! than a ring submission): `sendto` when the socket's own `UDP_SEGMENT` fits the send (it
//! follows the size of steady GSO batches, [`GsoState`]), else `sendmsg` with the size in a
//! control message.
//!
//! Tried for busy polling and not kept (2026-11-26, same window, pinned): the multishot receive
//! on a ring set up with `COOP_TASKRUN|TASKRUN_FLAG`, armed by the polling thread, a poll
//! reading the CQ and `IORING_SQ_TASKRUN` in ring memory and entering the kernel (`GETEVENTS`)
//! only when set. One `io_uring_enter` per datagram and no syscall per empty poll, as
//! designed, yet slower: 8-byte WRITE half round trip 7.2-7.5 against 6.1-6.5 µs with
//! `recvmsg`, `uroce-perf raw-ping --ack 20` 4.8-4.9 against 3.9-4.0 µs, and some round trips
//! waited milliseconds (50 000 took 3.2 s against 0.5 s: the flag was not always set when the
//! work was queued).

#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Once;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use nix::sys::socket::{setsockopt, sockopt, SockaddrLike, SockaddrStorage};

use super::connected::ConnectedPeers;
use super::place::{PlacingRx, Received};
use super::syscall::{deliver, send_one, SyscallRx};
use super::tx_thread::TxThread;
use super::{Backend, BackendKind, DriverFeatures, DriverStats, Sink};

/// Submission queue entries: every send buffer plus the receive and a cancellation fit.
const SQ_ENTRIES: u32 = 64;
/// Completion queue entries: more than the provided buffers plus the send buffers, so the
/// queue cannot overflow.
const CQ_ENTRIES: u32 = 256;

/// Provided receive buffers (a power of two, as the buffer ring needs). 16 × 64 KiB stays in
/// this CPU's 1 MiB L2: the ring hands its buffers out in turn, so every buffer is touched,
/// and 64 of them cost the receiver 1.6× the CPU per byte of 8, 16 or 32 in the raw probe
/// (docs/perf/JOURNAL.md, "A buffer ring that fits in the cache"). Fewer buffers only make
/// the ring run dry (a re-arm) more often.
const RX_BUFS: u16 = 16;
/// The buffer group of the receive buffers.
const BGID: u16 = 0;
/// `struct io_uring_recvmsg_out` (four `u32`s) at the start of every receive buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// The source address field: a `sockaddr_in6` holds either family.
const RX_NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// The control field: `IPV6_PKTINFO` (40 bytes with its header) or `IP_PKTINFO` (32), and
/// `UDP_GRO` (24), with room to spare.
const RX_CONTROL_LEN: usize = 128;
/// Largest UDP payload (IPv6's jumbo-free maximum; IPv4's is 65507).
const RX_PAYLOAD_LEN: usize = 65527;
/// One receive buffer: header, name, control and a whole GRO super-buffer, rounded up.
const RX_BUF_LEN: usize =
    (RECVMSG_OUT_LEN + RX_NAME_LEN + RX_CONTROL_LEN + RX_PAYLOAD_LEN + 255) & !255;
/// Most receive completions handled per [`Backend::recv_ready`] call.
const RX_BUDGET: usize = 32;

/// Send buffers.
const TX_SLOTS: usize = 32;
/// One send buffer: the largest UDP datagram (a GSO batch is one datagram to the kernel).
const TX_BUF_LEN: usize = 65536;

/// `user_data` of the multishot receive; send buffers use their index.
const UD_RECV: u64 = 1 << 40;
/// `user_data` of a cancellation.
const UD_CANCEL: u64 = 2 << 40;
/// `user_data` of the one-shot poll for a readable socket (placing receive mode).
const UD_POLL: u64 = 3 << 40;
/// Datagrams in a row with nothing to place after which the placing receive hands back to
/// the multishot receive ([`UringBackend::recv_ready_placing`]).
const PLACE_IDLE: usize = 64;

/// `IORING_SEND_ZC_REPORT_USAGE` (`sqe->ioprio` of a zero-copy send) and
/// `IORING_NOTIF_USAGE_ZC_COPIED` (its notification's result): the kernel says whether it
/// copied the data after all (`linux/io_uring.h`; the io-uring crate keeps them private).
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// `SOL_UDP` and the UDP socket options used as control messages (`linux/udp.h`).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// `struct cmsghdr` layout: the length (a `size_t`) first, then level and type.
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();
const CMSG_LEVEL: usize = offset_of!(libc::cmsghdr, cmsg_level);
const CMSG_TYPE: usize = offset_of!(libc::cmsghdr, cmsg_type);
const CMSG_ALIGN: usize = size_of::<libc::size_t>();
const _: () = assert!(CMSG_LEVEL == size_of::<libc::size_t>() && CMSG_HDR % CMSG_ALIGN == 0);

const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN - 1) & !(CMSG_ALIGN - 1)
}

static WARN_RX: Once = Once::new();
static WARN_GSO: Once = Once::new();

/// What [`UringBackend::with_options`] may use (tests turn features off to exercise the
/// fallbacks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Try the multishot receive over a buffer ring.
    pub multishot: bool,
    /// Send with `SENDMSG_ZC` instead of `SENDMSG` (the raw probe's measurement only: on veth
    /// and loopback the kernel copies the pages anyway when it delivers them to a local
    /// socket, and a slot stays busy until the notification).
    pub send_zc: bool,
    /// Zero-copy receive while an inbound message is in progress (`driver/place.rs`); on
    /// unless `UROCE_ZCRX=0`, which keeps the copying multishot receive (for A/B runs).
    pub place: bool,
    /// Set the ring up with `SQPOLL`, its kernel thread polling this long before it sleeps
    /// (the kernel rounds up to whole jiffies). Falls back to a plain ring, with a warning,
    /// where the kernel refuses it.
    pub sq_poll: Option<Duration>,
    /// Hand the sends to a thread of the back end's own (`tx_thread.rs`) instead of
    /// submitting them on the ring; `sq_poll` is then not used.
    pub tx_thread: bool,
    /// While busy-polled, send to and receive from each peer through a socket connected to
    /// it (`connected.rs`).
    pub connected_tx: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            multishot: true,
            send_zc: false,
            place: std::env::var_os("UROCE_ZCRX").is_none_or(|v| v != "0"),
            sq_poll: None,
            tx_thread: false,
            connected_tx: false,
        }
    }
}

/// An entry of the buffer ring: `struct io_uring_buf`. The `resv` field of entry 0 is the
/// ring's tail.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(size_of::<RawBuf>() == 16 && offset_of!(RawBuf, resv) == 14);

/// The provided-buffer ring and the buffers it hands out. Its memory must stay valid while the
/// kernel may use it: until the buffer group is unregistered and no receive is in flight.
struct RxRing {
    entries: NonNull<RawBuf>,
    entries_layout: Layout,
    arena: NonNull<u8>,
    arena_layout: Layout,
    /// Our copy of the ring tail (the kernel only reads it).
    tail: u16,
    /// The `msghdr` the multishot receive was armed with: only its name and control lengths
    /// matter, and the completions are parsed with it.
    msg: Box<libc::msghdr>,
}

impl RxRing {
    fn new() -> io::Result<RxRing> {
        let oom = || io::Error::from(io::ErrorKind::OutOfMemory);
        // The ring must be page aligned.
        let entries_layout =
            Layout::from_size_align(usize::from(RX_BUFS) * size_of::<RawBuf>(), 4096)
                .map_err(|_| oom())?;
        let arena_layout =
            Layout::from_size_align(usize::from(RX_BUFS) * RX_BUF_LEN, 64).map_err(|_| oom())?;
        // SAFETY: both layouts have a non-zero size.
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<RawBuf>())
            .ok_or_else(oom)?;
        // SAFETY: non-zero size; zeroed so every byte the receive path may read is initialised.
        let arena = match NonNull::new(unsafe { alloc::alloc_zeroed(arena_layout) }) {
            Some(a) => a,
            None => {
                // SAFETY: allocated just above with this layout, not shared with anyone yet.
                unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
                return Err(oom());
            }
        };
        // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = RX_NAME_LEN as libc::socklen_t;
        msg.msg_controllen = RX_CONTROL_LEN as _;
        let mut rx = RxRing {
            entries,
            entries_layout,
            arena,
            arena_layout,
            tail: 0,
            msg,
        };
        for bid in 0..RX_BUFS {
            rx.recycle(bid);
        }
        Ok(rx)
    }

    /// Gives buffer `bid` (back) to the kernel.
    fn recycle(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (RX_BUFS - 1));
        let addr = self.arena.as_ptr() as u64 + u64::from(bid) * RX_BUF_LEN as u64;
        // SAFETY: `idx < RX_BUFS`, so the entry lies inside the ring allocation. The kernel
        // reads only entries between its head and our published tail, and this one is at the
        // tail, so nobody reads it while we write. The fields are written through raw pointers
        // so the `resv` field of entry 0 (the tail, read by the kernel) is never touched here.
        unsafe {
            let e = self.entries.as_ptr().add(idx);
            std::ptr::addr_of_mut!((*e).addr).write(addr);
            std::ptr::addr_of_mut!((*e).len).write(RX_BUF_LEN as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the aligned `u16` at offset 14 of entry 0, inside the ring
        // allocation, and is only ever accessed atomically (by us with this store, by the
        // kernel with an acquiring load). The release store publishes the entry written above.
        let tail =
            unsafe { &*std::ptr::addr_of!((*self.entries.as_ptr()).resv).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and handed back.
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid.min(RX_BUFS - 1));
        let len = len.min(RX_BUF_LEN);
        // SAFETY: the range lies inside the arena (bid and len are clamped). The arena was
        // zero-initialised. A completion handed this buffer to us, and it goes back to the
        // kernel only through `recycle(&mut self)`, which cannot run while this shared borrow
        // lives, so the kernel does not write it meanwhile.
        unsafe { std::slice::from_raw_parts(self.arena.as_ptr().add(bid * RX_BUF_LEN), len) }
    }

    fn ring_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the back end drops an `RxRing` only
        // after the kernel stopped using it (see `UringBackend::drop`, which leaks it otherwise).
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.arena.as_ptr(), self.arena_layout);
        }
    }
}

/// Control message space for one `UDP_SEGMENT` (a `u16`), aligned like `cmsghdr`.
#[repr(C, align(8))]
struct SegmentCmsg([u8; CMSG_HDR + cmsg_align(2)]);

impl SegmentCmsg {
    fn new(segment: u16) -> SegmentCmsg {
        let mut b = [0u8; CMSG_HDR + cmsg_align(2)];
        let len = (CMSG_HDR + 2) as libc::size_t;
        b[..CMSG_LEVEL].copy_from_slice(&len.to_ne_bytes());
        b[CMSG_LEVEL..CMSG_LEVEL + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
        b[CMSG_TYPE..CMSG_TYPE + 4].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
        b[CMSG_HDR..CMSG_HDR + 2].copy_from_slice(&segment.to_ne_bytes());
        SegmentCmsg(b)
    }
}

/// A send buffer with everything its `SENDMSG` points to. Boxed so those pointers stay valid
/// while the kernel may read them (until the completion).
struct SendSlot {
    buf: Box<[u8]>,
    addr: SockaddrStorage,
    iov: libc::iovec,
    ctrl: SegmentCmsg,
    msg: libc::msghdr,
    dst: SocketAddr,
    len: usize,
    segment: Option<usize>,
}

impl SendSlot {
    fn new() -> Box<SendSlot> {
        Box::new(SendSlot {
            buf: vec![0; TX_BUF_LEN].into_boxed_slice(),
            addr: SockaddrStorage::from(SocketAddr::from(([0, 0, 0, 0], 0))),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            ctrl: SegmentCmsg::new(0),
            // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
            msg: unsafe { std::mem::zeroed() },
            dst: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            segment: None,
        })
    }

    /// Points the `msghdr` at this slot's fields to send the first `len` bytes of the buffer
    /// (`len` is at most [`TX_BUF_LEN`]). `sock_gso`: the socket's own `UDP_SEGMENT` (0: none);
    /// while it is set, every `msghdr` says its segment size (0 for one datagram), so that the
    /// socket's default never applies to a send built for another size.
    fn prepare(&mut self, dst: SocketAddr, len: usize, segment: Option<usize>, sock_gso: u16) {
        let len = len.min(TX_BUF_LEN);
        self.dst = dst;
        self.len = len;
        self.segment = segment.filter(|&s| s > 0 && s < len);
        self.addr = SockaddrStorage::from(dst);
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        self.msg.msg_name = self.addr.as_ptr().cast_mut().cast();
        self.msg.msg_namelen = self.addr.len();
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_flags = 0;
        match (self.segment, sock_gso) {
            (None, 0) => {
                self.msg.msg_control = std::ptr::null_mut();
                self.msg.msg_controllen = 0;
            }
            (s, _) => {
                self.ctrl = SegmentCmsg::new(s.unwrap_or(0) as u16);
                self.msg.msg_control = self.ctrl.0.as_mut_ptr().cast();
                self.msg.msg_controllen = self.ctrl.0.len() as _;
            }
        }
    }
}

impl SendSlot {
    /// Counts the result of this slot's send (`res`: bytes sent, or `-errno`), as its
    /// completion or the send thread reports it.
    fn sent(&self, res: i32, sock: &UdpSocket, gso: &mut GsoState, stats: &mut DriverStats) {
        if res >= 0 {
            stats.tx_bytes += res as u64;
            return;
        }
        let e = -res;
        match e {
            // Lost like on a network (RC retransmits).
            libc::EAGAIN | libc::ENOBUFS | libc::ECONNREFUSED => stats.tx_dropped += 1,
            // Cancelled at shutdown.
            libc::ECANCELED => {}
            // The route's device cannot segment (no checksum offload) or take this segment
            // size: send this batch and every later one packet by packet.
            libc::EIO | libc::EINVAL if self.segment.is_some() => {
                let why = io::Error::from_raw_os_error(e);
                if self.resend_unsegmented(sock, gso, &why, stats).is_err() {
                    stats.tx_errors += 1;
                }
            }
            _ => stats.tx_errors += 1,
        }
    }

    /// After a GSO send of this slot failed with `e` (the route's device cannot segment, or
    /// not this segment size): turns GSO off for good (`gso`) and sends the slot's packets
    /// one by one with `sendmsg`.
    fn resend_unsegmented(
        &self,
        sock: &UdpSocket,
        gso: &mut GsoState,
        e: &io::Error,
        stats: &mut DriverStats,
    ) -> io::Result<()> {
        WARN_GSO.call_once(|| {
            tracing::warn!("io_uring: UDP GSO send failed ({e}); sending packet by packet");
        });
        gso.disable(sock);
        send_unsegmented(sock, self.dst, &self.buf[..self.len], self.segment, stats)
    }
}

/// Consecutive GSO sends of one segment size, other than the socket's, after which the socket's
/// own `UDP_SEGMENT` follows it (one `setsockopt`); a busy poll's steady traffic (a ping-pong's
/// WRITE and held ACK, a stream of full batches) then sends with a plain `sendto`.
const GSO_FOLLOW: u8 = 4;

/// Whether UDP GSO works, and the socket's own `UDP_SEGMENT` option (busy-polled sends).
///
/// A busy-polled send is a syscall on the critical path of a ping-pong: `sendto` costs less
/// than `sendmsg`, which copies in a `msghdr`, an iovec and the `UDP_SEGMENT` control message
/// (measured ≈ 0.2 µs per 2-segment send here, see docs/ARCHITECTURE.md). With the segment
/// size set on the socket, a batch of that size and any datagram no longer than it go out with
/// `sendto`; every other send names its size (0: none) in a control message.
#[derive(Debug)]
struct GsoState {
    /// GSO works (cleared for good when a GSO send fails).
    on: bool,
    /// The socket's `UDP_SEGMENT` (0: not set).
    sock: u16,
    /// The segment size of the latest GSO sends that differed from `sock`, and how many.
    streak: (u16, u8),
}

impl GsoState {
    /// Whether a send of `len` bytes in `segment`-byte packets (`None`: one datagram) can go
    /// out without a control message.
    fn plain(&self, len: usize, segment: Option<usize>) -> bool {
        let sock = usize::from(self.sock);
        match segment {
            Some(s) => s == sock,
            None => sock == 0 || len <= sock,
        }
    }

    /// Counts a GSO send of `segment`-byte packets; after [`GSO_FOLLOW`] in a row with a size
    /// other than the socket's, sets the socket's option to it.
    fn follow(&mut self, sock: &UdpSocket, segment: Option<usize>) {
        let Some(s) = segment.and_then(|s| u16::try_from(s).ok()) else {
            return;
        };
        if !self.on || s == self.sock {
            self.streak = (0, 0);
            return;
        }
        self.streak = match self.streak {
            (t, n) if t == s => (s, n.saturating_add(1)),
            _ => (s, 1),
        };
        if self.streak.1 >= GSO_FOLLOW {
            self.streak = (0, 0);
            if setsockopt(sock, sockopt::UdpGsoSegment, &i32::from(s)).is_ok() {
                self.sock = s;
            }
        }
    }

    /// Turns GSO off for good, and the socket's option with it.
    fn disable(&mut self, sock: &UdpSocket) {
        self.on = false;
        if self.sock != 0 && setsockopt(sock, sockopt::UdpGsoSegment, &0).is_ok() {
            self.sock = 0;
        }
    }
}

/// Sends `data` to `dst` as `segment`-byte packets (the last may be shorter), one `sendmsg`
/// each: what a GSO batch becomes where GSO does not work. Every packet is tried; the first
/// error is returned.
fn send_unsegmented(
    sock: &UdpSocket,
    dst: SocketAddr,
    data: &[u8],
    segment: Option<usize>,
    stats: &mut DriverStats,
) -> io::Result<()> {
    let to = SockaddrStorage::from(dst);
    let seg = segment.unwrap_or(data.len()).max(1);
    let mut r = Ok(());
    for pkt in data.chunks(seg) {
        r = r.and(send_one(sock, &to, pkt, stats));
    }
    r
}

/// The io_uring back end (see the module documentation).
pub(crate) struct UringBackend {
    ring: IoUring,
    sock: UdpSocket,
    /// The buffer ring, when the multishot receive works; `None`: receive with syscalls.
    rx: Option<RxRing>,
    syscall_rx: SyscallRx,
    /// The multishot receive is in flight.
    armed: bool,
    /// Receive completions taken off the ring by a send path, waiting for `recv_ready`.
    pending_rx: VecDeque<(i32, u32)>,
    /// Each slot boxed on its own: the kernel reads an in-flight slot while another one is
    /// filled through `&mut`, which then borrows only that slot's memory.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot>>,
    free: Vec<usize>,
    /// The slot handed out by [`Backend::tx_buffer`], not yet sent.
    current: Option<usize>,
    /// The device is busy-polled: receive with `recvmsg` syscalls, never arm the multishot
    /// receive (see [`Backend::set_busy_poll`] on this type).
    busy_poll: bool,
    gso: GsoState,
    gro: bool,
    /// Sends are `SENDMSG_ZC` (see [`Options::send_zc`]).
    send_zc: bool,
    local_default: IpAddr,
    /// Most segments one GSO send may carry ([`gso_max_segments`]).
    max_segments: usize,
    stats: DriverStats,
    /// Zero-copy receive is allowed ([`Options::place`]).
    place: bool,
    /// Receiving with peek + scatter `recvmsg` ([`PlacingRx`]) instead of the multishot
    /// receive, while the engine has inbound data to place or the socket stays readable.
    placing: bool,
    place_rx: PlacingRx,
    /// The one-shot `POLL_ADD` on the socket is in flight: the ring's descriptor polls
    /// readable when the socket does (the multishot receive is not armed meanwhile).
    poll_armed: bool,
    /// A cancellation of the multishot receive was submitted and its end not yet seen.
    cancelling: bool,
    /// `recv_ready` leaves the multishot receive unarmed (the placing receive takes over).
    hold_arm: bool,
    /// Datagrams in a row the placing receive took without a plan.
    unplanned: usize,
    /// The send thread, which then takes every queued send ([`Options::tx_thread`]).
    tx: Option<TxThread>,
    /// Slots the send thread handed back, being reaped.
    tx_done: Vec<(usize, i32)>,
    /// Slots handed to the send thread and not yet reaped.
    tx_held: usize,
    /// Busy-polled sends go out from sockets connected to their peers
    /// ([`Options::connected_tx`]; set while busy-polled).
    connected: Option<ConnectedPeers>,
    connected_tx: bool,
    /// Which thread may arm the receive operations.
    rx_owner: RxOwner,
    /// A thread that may not arm saw the multishot receive end: the owner must re-arm it.
    rearm_wanted: bool,
    /// The ring was set up with `COOP_TASKRUN`.
    coop: bool,
}

/// Which thread may arm the ring's receive operations (the multishot receive, the placing
/// receive's `POLL_ADD`). The kernel runs their completion work on the thread that armed
/// them, and under `COOP_TASKRUN` only when that thread enters the kernel: an application
/// thread that armed one (by polling a thread-mode device's progress) and then spun in user
/// space would hold back every datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxOwner {
    /// Any thread: no progress thread (a busy-polled device never arms).
    Any,
    /// The progress thread, not started yet: nobody arms, receives are syscalls.
    Reserved,
    /// Only this thread, the progress thread.
    Thread(std::thread::ThreadId),
}

// SAFETY: the raw pointers inside (`RxRing`, the `msghdr`s and iovecs of the send slots) point
// only into heap memory this back end owns and that never moves; nothing else holds them but
// the kernel, whose accesses do not depend on which thread owns the back end. All use goes
// through `&mut self` (the device keeps the back end behind its mutex), so moving it to
// another thread transfers sole ownership like any owned buffer.
unsafe impl Send for UringBackend {}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

static WARN_SQPOLL: Once = Once::new();

/// Sets up the ring with the most useful flags this kernel accepts (`SQPOLL` only when
/// asked for).
fn build_ring(sq_poll: Option<Duration>) -> io::Result<(IoUring, &'static str)> {
    if let Some(idle) = sq_poll {
        let ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut b = IoUring::builder();
        b.setup_sqpoll(ms)
            .setup_submit_all()
            .setup_cqsize(CQ_ENTRIES);
        match b.build(SQ_ENTRIES) {
            Ok(r) => return Ok((r, "SQPOLL|SUBMIT_ALL|CQSIZE")),
            // Refused (an old kernel, or a sandbox): the plain ring works the same, slower.
            Err(e) => WARN_SQPOLL.call_once(|| {
                tracing::warn!("io_uring: SQPOLL refused ({e}); submitting from the caller")
            }),
        }
    }
    // COOP_TASKRUN (5.19): completion work queued to a running thread waits for its next
    // entry into the kernel instead of an interrupt (see the module documentation).
    let mut b = IoUring::builder();
    b.setup_submit_all()
        .setup_coop_taskrun()
        .setup_cqsize(CQ_ENTRIES);
    match b.build(SQ_ENTRIES) {
        Ok(r) => return Ok((r, "SUBMIT_ALL|COOP_TASKRUN|CQSIZE")),
        Err(e) if errno(&e) == libc::EINVAL => {}
        Err(e) => return Err(e),
    }
    let mut b = IoUring::builder();
    b.setup_submit_all().setup_cqsize(CQ_ENTRIES);
    match b.build(SQ_ENTRIES) {
        Ok(r) => return Ok((r, "SUBMIT_ALL|CQSIZE")),
        Err(e) if errno(&e) == libc::EINVAL => {}
        Err(e) => return Err(e),
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(CQ_ENTRIES);
    match b.build(SQ_ENTRIES) {
        Ok(r) => Ok((r, "CQSIZE")),
        Err(e) if errno(&e) == libc::EINVAL => Ok((IoUring::new(SQ_ENTRIES)?, "none")),
        Err(e) => Err(e),
    }
}

impl UringBackend {
    /// A back end on `sock` (`gro`: the socket has UDP_GRO on). Fails, handing the socket
    /// back, when io_uring is unusable here (not built in, disabled, or lacking `SENDMSG`).
    pub(crate) fn new(sock: UdpSocket, gro: bool) -> Result<Self, (UdpSocket, io::Error)> {
        Self::with_options(sock, gro, Options::default())
    }

    pub(crate) fn with_options(
        sock: UdpSocket,
        gro: bool,
        opts: Options,
    ) -> Result<Self, (UdpSocket, io::Error)> {
        // With a send thread the ring submits no sends: a kernel thread polling it would
        // only burn CPU.
        let sq_poll = opts.sq_poll.filter(|_| !opts.tx_thread);
        let (ring, flags) = match build_ring(sq_poll) {
            Ok(r) => r,
            Err(e) => return Err((sock, e)),
        };
        let mut probe = Probe::new();
        if let Err(e) = ring.submitter().register_probe(&mut probe) {
            return Err((sock, e));
        }
        for (code, name) in [
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                let e = io::Error::new(io::ErrorKind::Unsupported, format!("no {name}"));
                return Err((sock, e));
            }
        }
        if opts.send_zc && !probe.is_supported(opcode::SendMsgZc::CODE) {
            let e = io::Error::new(io::ErrorKind::Unsupported, "no SENDMSG_ZC");
            return Err((sock, e));
        }
        let local_default = match sock.local_addr() {
            Ok(a) => a.ip(),
            Err(e) => return Err((sock, e)),
        };
        let tx = if opts.tx_thread {
            match sock.try_clone().and_then(TxThread::start) {
                Ok(t) => Some(t),
                Err(e) => return Err((sock, e)),
            }
        } else {
            None
        };
        let mut b = UringBackend {
            ring,
            sock,
            rx: None,
            syscall_rx: SyscallRx::new(),
            armed: false,
            pending_rx: VecDeque::new(),
            slots: (0..TX_SLOTS).map(|_| SendSlot::new()).collect(),
            free: (0..TX_SLOTS).rev().collect(),
            current: None,
            busy_poll: false,
            gso: GsoState {
                on: true,
                sock: 0,
                streak: (0, 0),
            },
            send_zc: opts.send_zc,
            gro,
            local_default,
            max_segments: gso_max_segments(local_default),
            stats: DriverStats::default(),
            place: opts.place,
            placing: false,
            place_rx: PlacingRx::new(),
            poll_armed: false,
            cancelling: false,
            hold_arm: false,
            unplanned: 0,
            tx,
            tx_done: Vec::with_capacity(TX_SLOTS),
            tx_held: 0,
            connected: None,
            connected_tx: opts.connected_tx,
            rx_owner: RxOwner::Any,
            rearm_wanted: false,
            coop: flags.contains("COOP_TASKRUN"),
        };
        let rx = if opts.multishot {
            b.probe_multishot()
        } else {
            Err("turned off".to_string())
        };
        if let Err(why) = &rx {
            WARN_RX.call_once(|| {
                tracing::warn!(
                    "io_uring: multishot recvmsg over a buffer ring unavailable ({why}); \
                     receiving with recvmsg syscalls (sends still use io_uring)"
                );
            });
        }
        tracing::debug!(
            ring_flags = flags,
            multishot_recv = rx.is_ok(),
            gro,
            "io_uring back end"
        );
        Ok(b)
    }

    /// Registers the buffer ring and arms a multishot receive, then cancels it (it is armed
    /// for good from `recv_ready`, on the thread that reaps). Leaves `self.rx` set if both work.
    fn probe_multishot(&mut self) -> Result<(), String> {
        let rx = RxRing::new().map_err(|e| e.to_string())?;
        // SAFETY: the ring memory holds `RX_BUFS` entries and stays valid until the group is
        // unregistered: `self.rx` owns it, and `Drop` unregisters it (or leaks it when the
        // kernel could still use it).
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(rx.ring_addr(), RX_BUFS, BGID, 0)
        }
        .map_err(|e| format!("buffer ring: {e}"))?;
        self.rx = Some(rx);
        let arm = self.arm().and_then(|()| {
            self.push(
                opcode::AsyncCancel::new(UD_RECV)
                    .build()
                    .user_data(UD_CANCEL),
            )
        });
        let mut failed = arm.err().map(|e| e.to_string());
        if failed.is_none() {
            failed = self.settle(Duration::from_secs(5)).err();
        }
        // Only an error other than the cancellation tells that multishot recvmsg is missing.
        let refused = self
            .pending_rx
            .iter()
            .find(|&&(res, flags)| res < 0 && res != -libc::ECANCELED && !cqueue::more(flags))
            .map(|&(res, _)| io::Error::from_raw_os_error(-res));
        // Keep received data (a peer may already send), drop the probe's end.
        self.pending_rx
            .retain(|&(res, flags)| res >= 0 || cqueue::more(flags));
        let failed = failed.or(refused.map(|e| format!("multishot recvmsg: {e}")));
        match failed {
            None => Ok(()),
            Some(why) => {
                if !self.armed {
                    let _ = self.ring.submitter().unregister_buf_ring(BGID);
                    self.rx = None;
                    self.pending_rx.clear();
                }
                // else: still in flight after 5 s; `Drop` deals with it.
                Err(why)
            }
        }
    }

    /// Submits, then waits until the receive is no longer armed and every send completed
    /// (or `timeout` passed). Receive completions stay in `pending_rx`; `armed` is updated.
    fn settle(&mut self, timeout: Duration) -> Result<(), String> {
        let end = std::time::Instant::now() + timeout;
        self.submit().map_err(|e| e.to_string())?;
        loop {
            self.reap();
            if self.pending_rx.iter().any(|&(_, f)| !cqueue::more(f)) {
                self.armed = false;
            }
            let idle = self.free.len() + usize::from(self.current.is_some());
            if !self.armed && idle == self.slots.len() {
                return Ok(());
            }
            if std::time::Instant::now() >= end {
                return Err("operations still in flight".into());
            }
            self.wait_completion(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for a completion: a slot from the send thread while it holds
    /// any, else a completion on the ring.
    fn wait_completion(&mut self, timeout: Duration) {
        if let Some(t) = self.tx.as_ref().filter(|_| self.tx_held > 0) {
            if t.wait_done(timeout).is_ok() {
                return;
            }
        }
        self.wait_cqe(timeout);
    }

    /// Waits up to `timeout` for a completion on the ring.
    fn wait_cqe(&mut self, timeout: Duration) {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.stats.ring_enters += 1;
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(errno(&e), libc::ETIME | libc::EINTR | libc::EBUSY) => {}
            // No EXT_ARG (before 5.11): sleep instead.
            Err(_) => std::thread::sleep(timeout.min(Duration::from_millis(1))),
        }
    }

    /// Queues the multishot receive.
    fn arm(&mut self) -> io::Result<()> {
        let Some(rx) = &self.rx else { return Ok(()) };
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.sock.as_raw_fd()),
            &*rx.msg as *const libc::msghdr,
            BGID,
        )
        .build()
        .user_data(UD_RECV);
        self.push(entry)?;
        self.armed = true;
        self.rearm_wanted = false;
        self.stats.rx_arms += 1;
        Ok(())
    }

    /// Puts `entry` in the submission queue (submitting first if it is full).
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed points only at memory owned by this back end that
            // outlives the operation: a send slot, which is not reused before its completion
            // (for a zero-copy send, its notification) was reaped, or the receive `msghdr`
            // and buffer ring, kept until `Drop` has seen the receive end (or leaked). A
            // cancellation points at nothing.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
            if self.sq_poll() && self.ring.submission().is_full() {
                // The kernel thread has not taken the entries yet: sleep until it has.
                match self.ring.submitter().squeue_wait() {
                    Ok(_) => {}
                    Err(e) if errno(&e) == libc::EINTR => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// The ring's submissions are taken by a kernel thread (`SQPOLL`).
    fn sq_poll(&self) -> bool {
        self.ring.params().is_setup_sqpoll()
    }

    /// Whether the calling thread may arm receive operations ([`RxOwner`]).
    fn may_arm(&self) -> bool {
        match self.rx_owner {
            RxOwner::Any => true,
            RxOwner::Reserved => false,
            RxOwner::Thread(id) => id == std::thread::current().id(),
        }
    }

    /// Submits what is queued.
    fn submit(&mut self) -> io::Result<()> {
        loop {
            if self.ring.submission().is_empty() {
                return Ok(());
            }
            self.stats.ring_enters += 1;
            match self.ring.submit() {
                // The kernel thread takes the entries in its own time; `submit` woke it
                // if it slept.
                Ok(_) if self.sq_poll() => return Ok(()),
                Ok(_) => {}
                Err(e) if errno(&e) == libc::EINTR => {}
                // Completions must be reaped first.
                Err(e) if matches!(errno(&e), libc::EBUSY | libc::EAGAIN) => self.reap(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every completion off the ring: sends free their slot, receives wait in
    /// `pending_rx`.
    fn reap(&mut self) {
        let UringBackend {
            ring,
            sock,
            pending_rx,
            slots,
            free,
            gso,
            stats,
            poll_armed,
            tx,
            tx_done,
            tx_held,
            ..
        } = self;
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            if ud == UD_RECV {
                pending_rx.push_back((cqe.result(), cqe.flags()));
                continue;
            }
            if ud == UD_POLL {
                *poll_armed = false;
                continue;
            }
            let Ok(i) = usize::try_from(ud) else { continue };
            let Some(slot) = slots.get(i) else { continue };
            let res = cqe.result();
            if cqueue::notif(cqe.flags()) {
                // A zero-copy send's notification: the kernel is done with the slot.
                stats.tx_zc_notifs += 1;
                if res as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    stats.tx_zc_copied += 1;
                }
                free.push(i);
                continue;
            }
            // A zero-copy send's result: the notification frees the slot.
            let notif_follows = cqueue::more(cqe.flags());
            slot.sent(res, sock, gso, stats);
            if !notif_follows {
                free.push(i);
            }
        }
        if let Some(t) = tx {
            t.take_done(tx_done);
            *tx_held = tx_held.saturating_sub(tx_done.len());
            for (i, res) in tx_done.drain(..) {
                if let Some(slot) = slots.get(i) {
                    slot.sent(res, sock, gso, stats);
                    free.push(i);
                }
            }
        }
    }

    /// A free send slot; when all are in flight, submits and waits for one.
    fn take_slot(&mut self) -> io::Result<usize> {
        if self.free.is_empty() {
            self.submit()?;
            self.reap();
            if self.free.is_empty() {
                self.stats.tx_slot_waits += 1;
            }
        }
        while self.free.is_empty() {
            if let Some(t) = &self.tx {
                t.wait_done(Duration::from_millis(100))?;
                self.reap();
                continue;
            }
            self.stats.ring_enters += 1;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(errno(&e), libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
        Ok(self.free.pop().expect("a free slot"))
    }

    /// Prepares slot `i` (taken, filled) to send its first `len` bytes and counts the send.
    fn prepare_slot(
        &mut self,
        i: usize,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> &mut SendSlot {
        let slot = &mut *self.slots[i];
        slot.prepare(dst, len, segment, self.gso.sock);
        self.stats.count_send(slot.segment.is_some());
        slot
    }

    /// Sends the first `len` bytes of slot `i` (taken, filled) with a syscall now and frees
    /// the slot: a busy-polled device's path (see [`Backend::set_busy_poll`]). `sendto` when
    /// the socket's own segment size fits the send ([`GsoState`]), else `sendmsg`.
    fn send_slot_now(
        &mut self,
        i: usize,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let segment = segment.filter(|&s| s > 0 && s < len.min(TX_BUF_LEN));
        if let Some(c) = &mut self.connected {
            let slot = &mut *self.slots[i];
            if c.send(
                &self.sock,
                dst,
                &mut slot.buf[..len.min(TX_BUF_LEN)],
                segment,
            )
            .is_some()
            {
                self.stats.count_send(segment.is_some());
                self.stats.tx_connected += 1;
                self.free.push(i);
                return Ok(());
            }
        }
        // Change the socket's option only while no queued `SENDMSG` (built for the old one)
        // is in flight: slot `i` is the only one taken.
        if self.free.len() + 1 == self.slots.len() {
            self.gso.follow(&self.sock, segment);
        }
        let plain = self.gso.plain(len, segment);
        let slot = self.prepare_slot(i, dst, len, segment);
        let r = loop {
            let n = if plain {
                // SAFETY: the buffer holds at least `slot.len` initialised bytes and
                // `slot.addr` is a valid socket address of `len()` bytes; both stay alive and
                // unchanged during this synchronous call.
                unsafe {
                    libc::sendto(
                        fd,
                        slot.buf.as_ptr().cast(),
                        slot.len,
                        0,
                        slot.addr.as_ptr(),
                        slot.addr.len(),
                    )
                }
            } else {
                // SAFETY: `slot.msg` points at the slot's own address, iovec (its buffer,
                // `len` bytes) and control message, all alive and unchanged during this
                // synchronous call; the kernel copies what it needs before returning.
                unsafe { libc::sendmsg(fd, &slot.msg, 0) }
            };
            if n >= 0 {
                break Ok(());
            }
            let e = io::Error::last_os_error();
            match errno(&e) {
                libc::EINTR => continue,
                // Lost like on a network (RC retransmits).
                libc::EAGAIN | libc::ENOBUFS | libc::ECONNREFUSED => break Ok(()),
                libc::EIO | libc::EINVAL if slot.segment.is_some() => {
                    let slot = &*self.slots[i];
                    break slot.resend_unsegmented(&self.sock, &mut self.gso, &e, &mut self.stats);
                }
                _ => break Err(e),
            }
        };
        self.free.push(i);
        r
    }

    /// Queues a `SENDMSG` of the first `len` bytes of slot `i` (taken, filled).
    fn queue_slot(
        &mut self,
        i: usize,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()> {
        let fd = types::Fd(self.sock.as_raw_fd());
        let send_zc = self.send_zc;
        let slot = self.prepare_slot(i, dst, len, segment);
        let msg: *const libc::msghdr = &slot.msg;
        if let Some(t) = &self.tx {
            // SAFETY: slot `i` is boxed (its address never changes) and is neither written
            // nor freed until the thread hands it back: it returns to `free` only in `reap`,
            // from `take_done`, and `Drop` stops and joins the thread before the slots go.
            unsafe { t.send(i, msg) };
            self.tx_held += 1;
            return Ok(());
        }
        let slot = &*self.slots[i];
        let entry = if send_zc {
            opcode::SendMsgZc::new(fd, &slot.msg)
                .ioprio(SEND_ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::SendMsg::new(fd, &slot.msg).build()
        }
        .user_data(i as u64);
        if let Err(e) = self.push(entry) {
            self.free.push(i);
            return Err(e);
        }
        Ok(())
    }

    /// Hands the datagrams of receive buffer `bid` (`len` bytes filled) to `sink`.
    fn deliver_buffer(&mut self, bid: u16, len: usize, sink: Sink<'_>) -> usize {
        let UringBackend {
            rx,
            stats,
            local_default,
            ..
        } = self;
        let Some(rx) = rx else { return 0 };
        let Ok(out) = types::RecvMsgOut::parse(rx.buffer(bid, len), &rx.msg) else {
            stats.rx_truncated += 1;
            return 0;
        };
        if out.is_payload_truncated() || out.is_control_data_truncated() {
            stats.rx_truncated += 1;
            return 0;
        }
        let Some(from) = parse_name(out.name_data()) else {
            return 0;
        };
        let (to, gro) = parse_cmsgs(out.control_data());
        deliver(
            from,
            to.unwrap_or(*local_default),
            out.payload_data(),
            gro,
            sink,
            stats,
        )
    }
}

/// A `sockaddr_in` or `sockaddr_in6` as received.
pub(crate) fn parse_name(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The local address (`IP_PKTINFO`/`IPV6_PKTINFO`) and the GRO segment size (`UDP_GRO`) from
/// received control data.
pub(crate) fn parse_cmsgs(ctrl: &[u8]) -> (Option<IpAddr>, Option<usize>) {
    let (mut to, mut gro) = (None, None);
    let mut off = 0;
    while off + CMSG_HDR <= ctrl.len() {
        let h = &ctrl[off..off + CMSG_HDR];
        let Ok(len) = h[..CMSG_LEVEL].try_into().map(libc::size_t::from_ne_bytes) else {
            break;
        };
        let level = libc::c_int::from_ne_bytes(h[CMSG_LEVEL..CMSG_LEVEL + 4].try_into().unwrap());
        let ty = libc::c_int::from_ne_bytes(h[CMSG_TYPE..CMSG_TYPE + 4].try_into().unwrap());
        if len < CMSG_HDR || off + len > ctrl.len() {
            break;
        }
        let data = &ctrl[off + CMSG_HDR..off + len];
        match (level, ty) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
                if let Some(a) = data.get(8..12) {
                    let a: [u8; 4] = a.try_into().unwrap();
                    to = Some(IpAddr::V4(Ipv4Addr::from(a)));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
                if let Some(a) = data.get(0..16) {
                    let a: [u8; 16] = a.try_into().unwrap();
                    to = Some(IpAddr::V6(Ipv6Addr::from(a)));
                }
            }
            (SOL_UDP, UDP_GRO) => {
                if let Some(s) = data.get(0..4) {
                    let s = libc::c_int::from_ne_bytes(s.try_into().unwrap());
                    gro = usize::try_from(s).ok();
                }
            }
            _ => {}
        }
        off += cmsg_align(len);
    }
    (to, gro)
}

impl Backend for UringBackend {
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()> {
        if data.len() > TX_BUF_LEN {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        if let Some(seg) = segment.filter(|&s| s > 0 && s < data.len()) {
            if !self.gso.on {
                for pkt in data.chunks(seg) {
                    self.send(dst, pkt, None)?;
                }
                return Ok(());
            }
        }
        let i = self.take_slot()?;
        let slot = &mut *self.slots[i];
        slot.buf[..data.len()].copy_from_slice(data);
        self.queue_slot(i, dst, data.len(), segment)
    }

    fn tx_buffer(&mut self) -> io::Result<&mut [u8]> {
        let i = match self.current {
            Some(i) => i,
            None => {
                let i = self.take_slot()?;
                self.current = Some(i);
                i
            }
        };
        Ok(&mut self.slots[i].buf[..super::TX_MAX])
    }

    fn send_written(
        &mut self,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()> {
        let Some(i) = self.current.take() else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let len = len.min(super::TX_MAX);
        if let Some(seg) = segment.filter(|&s| s > 0 && s < len) {
            if !self.gso.on {
                // GSO failed once: packet by packet, straight from the slot.
                let data = &self.slots[i].buf[..len];
                let r = send_unsegmented(&self.sock, dst, data, Some(seg), &mut self.stats);
                self.free.push(i);
                return r;
            }
        }
        if self.busy_poll {
            return self.send_slot_now(i, dst, len, segment);
        }
        self.queue_slot(i, dst, len, segment)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.submit();
        // UDP sends complete while being submitted: free their buffers now.
        self.reap();
        r
    }

    fn drain_sends(&mut self, timeout: Duration) -> io::Result<bool> {
        let end = std::time::Instant::now() + timeout;
        self.submit()?;
        loop {
            self.reap();
            let idle = self.free.len() + usize::from(self.current.is_some());
            if idle == self.slots.len() {
                return Ok(true);
            }
            if std::time::Instant::now() >= end {
                return Ok(false);
            }
            self.wait_completion(Duration::from_millis(10));
        }
    }

    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        let drained = !self.armed && self.pending_rx.is_empty();
        let may_arm = self.may_arm();
        if may_arm {
            // The owner's own pass does what is needed (arms, or the placing receive).
            self.rearm_wanted = false;
        }
        // A thread that may not arm receives what the socket holds with syscalls.
        if self.rx.is_none() || ((self.busy_poll || !may_arm) && drained) {
            // Only the owner arms; it is asked to (`rx_pending`).
            self.rearm_wanted |= self.rx.is_some() && !self.busy_poll;
            if let Some(c) = &mut self.connected {
                return c.recv_ready(&self.sock, &mut self.syscall_rx, sink, &mut self.stats);
            }
            return self
                .syscall_rx
                .recv_ready(&self.sock, sink, &mut self.stats);
        }
        self.reap();
        let mut n = 0;
        let mut err = None;
        for _ in 0..RX_BUDGET {
            let Some((res, flags)) = self.pending_rx.pop_front() else {
                break;
            };
            let bid = cqueue::buffer_select(flags);
            if res >= 0 {
                if let Some(bid) = bid {
                    n += self.deliver_buffer(bid, res as usize, sink);
                }
            } else {
                match -res {
                    libc::ENOBUFS => self.stats.rx_no_buffers += 1,
                    libc::ECANCELED | libc::EINTR => {}
                    e => err = Some(io::Error::from_raw_os_error(e)),
                }
            }
            if let (Some(bid), Some(rx)) = (bid, self.rx.as_mut()) {
                rx.recycle(bid);
            }
            if !cqueue::more(flags) {
                self.armed = false;
                self.cancelling = false;
            }
        }
        if !self.armed && !self.busy_poll && !self.hold_arm {
            if may_arm {
                self.arm()?;
                self.submit()?;
            } else {
                self.rearm_wanted = true;
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn wait_fd(&self) -> io::Result<OwnedFd> {
        if self.rx.is_some() {
            // The ring's descriptor polls readable while completions are waiting.
            self.ring.as_fd().try_clone_to_owned()
        } else {
            self.sock.as_fd().try_clone_to_owned()
        }
    }

    fn max_segments(&self) -> usize {
        self.max_segments
    }

    fn rx_pending(&self) -> bool {
        // In placing mode with no poll armed, the socket may hold data that nothing signals
        // (a receive budget ended before it was drained).
        !self.pending_rx.is_empty()
            || (self.placing && !self.poll_armed && !self.armed)
            || self.rearm_wanted
    }

    fn set_receive_owner(&mut self, owner: Option<std::thread::ThreadId>) {
        self.rx_owner = owner.map_or(RxOwner::Reserved, RxOwner::Thread);
    }

    /// Thread progress with [`Options::place`]: the multishot receive while no inbound
    /// message is in progress; when one is (the engine says so after a receive), the
    /// multishot receive is cancelled and, once its last buffers are handed over, each
    /// datagram is peeked and received with its payload placed ([`PlacingRx`]). Placing
    /// mode lasts until [`PLACE_IDLE`] datagrams in a row had nothing to place: leaving it
    /// at the end of each message would hand the next message's first datagrams (the
    /// multishot receive takes all the socket holds, up to 16 × 64 KiB, before the engine
    /// sees the FIRST packet) to the copying path. While the socket is drained in placing
    /// mode a one-shot `POLL_ADD` makes the ring's descriptor signal the next datagram.
    fn recv_ready_placing(
        &mut self,
        eng: &mut uroce_proto::Device,
        now: uroce_proto::Instant,
    ) -> io::Result<usize> {
        if !self.place || self.rx.is_none() || self.busy_poll || !self.may_arm() {
            return self
                .recv_ready(&mut |from, to, bytes| eng.handle_datagram(now, from, to, bytes));
        }
        self.rearm_wanted = false;
        self.reap();
        let mut n = 0;
        if self.armed || !self.pending_rx.is_empty() {
            // The multishot receive's buffers first: they hold the older datagrams.
            self.hold_arm = true;
            let r =
                self.recv_ready(&mut |from, to, bytes| eng.handle_datagram(now, from, to, bytes));
            self.hold_arm = false;
            n = r?;
            let want = eng.placement_wanted();
            if want && self.armed && !self.cancelling {
                self.push(
                    opcode::AsyncCancel::new(UD_RECV)
                        .build()
                        .user_data(UD_CANCEL),
                )?;
                self.cancelling = true;
                // Placing from now on, even if the message that asked for it ends within the
                // buffers the multishot receive still holds: the next one is placed.
                self.placing = true;
                self.unplanned = 0;
                self.submit()?;
                self.reap();
            }
            if self.armed || !self.pending_rx.is_empty() {
                return Ok(n);
            }
            if !want && !self.placing {
                self.arm()?;
                self.submit()?;
                return Ok(n);
            }
        }
        if !self.placing && !eng.placement_wanted() {
            self.arm()?;
            self.submit()?;
            return Ok(n);
        }
        self.placing = true;
        for _ in 0..RX_BUDGET {
            match self.place_rx.recv_one(
                &self.sock,
                self.local_default,
                eng,
                now,
                &mut self.stats,
            )? {
                Received::Datagram { packets, placed } => {
                    n += packets;
                    self.unplanned = if placed { 0 } else { self.unplanned + 1 };
                    if self.unplanned >= PLACE_IDLE && !eng.placement_wanted() {
                        self.placing = false;
                        self.unplanned = 0;
                        self.arm()?;
                        self.submit()?;
                        return Ok(n);
                    }
                }
                Received::Empty => {
                    if self.unplanned < PLACE_IDLE || eng.placement_wanted() {
                        if !self.poll_armed {
                            let poll = opcode::PollAdd::new(
                                types::Fd(self.sock.as_raw_fd()),
                                libc::POLLIN as u32,
                            )
                            .build()
                            .user_data(UD_POLL);
                            self.push(poll)?;
                            self.poll_armed = true;
                        }
                    } else {
                        self.placing = false;
                        self.unplanned = 0;
                        self.arm()?;
                    }
                    self.submit()?;
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }

    /// A busy-polled device receives with non-blocking `recvmsg` syscalls (still splitting
    /// GRO super-buffers), one per call, and sends each datagram or GSO batch with a `sendto`
    /// or `sendmsg` syscall from its send buffer ([`UringBackend::send_slot_now`]): one thread
    /// does both, one datagram at a time, and a `SENDMSG` through
    /// the ring measured ≈ 0.7 µs slower per 8-byte WRITE half round trip than the syscall
    /// back end's `sendmsg` (10.3 against 9.6 µs, same window). The multishot receive's completion is
    /// posted by task work queued to the thread that armed it, which the kernel runs only
    /// after interrupting that thread (an inter-processor interrupt: a VM exit on a guest)
    /// when it never leaves user space: measured 18 µs median 8-byte WRITE round trip against
    /// 10 µs with syscalls. The data sits in the socket for the next poll instead.
    fn set_busy_poll(&mut self, on: bool) {
        self.busy_poll = on;
        self.connected = match self.sock.local_addr() {
            Ok(local) if on && self.connected_tx => ConnectedPeers::new(local),
            _ => None,
        };
        self.syscall_rx.set_busy_poll(on);
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures {
            backend: BackendKind::Uring,
            multishot_recv: self.rx.is_some(),
            gro: self.gro,
            gso: self.gso.on,
            sq_poll: self.sq_poll(),
            tx_thread: self.tx.is_some(),
            coop_taskrun: self.coop,
        }
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        if let Some(t) = &mut self.tx {
            // Its last sends are handed back before it ends, and reaped by `settle`.
            t.stop();
        }
        if let Some(i) = self.current.take() {
            self.free.push(i);
        }
        if self.armed {
            let cancel = opcode::AsyncCancel::new(UD_RECV)
                .build()
                .user_data(UD_CANCEL);
            let _ = self.push(cancel);
        }
        if self.poll_armed {
            // It points at no memory; cancelled only to leave the ring idle.
            let cancel = opcode::AsyncCancel::new(UD_POLL)
                .build()
                .user_data(UD_CANCEL);
            let _ = self.push(cancel);
        }
        if self.settle(Duration::from_secs(2)).is_ok() {
            if self.rx.is_some() {
                let _ = self.ring.submitter().unregister_buf_ring(BGID);
            }
        } else {
            // The kernel may still write the receive buffers or read a send buffer (the ring
            // outlives this back end while a duplicate of its descriptor is open): leak them
            // rather than free memory in use.
            tracing::error!("io_uring: operations still in flight at close; leaking buffers");
            std::mem::forget(self.rx.take());
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

/// Segments per GSO send on kernels whose `UDP_MAX_SEGMENTS` is 64 (before 2024).
const GSO_SEGMENTS_OLD: usize = 64;
/// Segments per GSO send on kernels with the 2024 change "net: change maximum number of UDP
/// segments to 128" (also in the stable trees). Twice the packets per `sendmsg` (and per GRO
/// receive and coalesced ACK at the peer) is what a stream of 64-byte WRITEs is limited by.
const GSO_SEGMENTS_NEW: usize = 128;

/// How many segments one GSO send may carry here: one `sendmsg` of 65 one-byte segments from
/// a throwaway socket on `local` to itself tells 128 (accepted) from 64 (`EINVAL`). The limit
/// is the kernel's, so a conclusive answer is kept for the process (devices and tests open
/// many back ends). Anything inconclusive (no address to send to, no route) keeps the old
/// limit, which every kernel with `UDP_SEGMENT` accepts, and is asked again next time. The
/// device's own socket is not used: the probe must not land in its receive queue.
fn gso_max_segments(local: IpAddr) -> usize {
    static KERNEL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&n) = KERNEL.get() {
        return n;
    }
    if local.is_unspecified() {
        return GSO_SEGMENTS_OLD;
    }
    let probe = || -> io::Result<()> {
        let s = UdpSocket::bind(SocketAddr::new(local, 0))?;
        let to = SockaddrStorage::from(s.local_addr()?);
        let seg: u16 = 1;
        let data = [0u8; GSO_SEGMENTS_OLD + 1];
        nix::sys::socket::sendmsg(
            s.as_raw_fd(),
            &[std::io::IoSlice::new(&data)],
            &[nix::sys::socket::ControlMessage::UdpGsoSegments(&seg)],
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            Some(&to),
        )?;
        Ok(())
    };
    match probe() {
        Ok(()) => *KERNEL.get_or_init(|| GSO_SEGMENTS_NEW),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            *KERNEL.get_or_init(|| GSO_SEGMENTS_OLD)
        }
        Err(_) => GSO_SEGMENTS_OLD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn backend(ip: &str, opts: Options) -> UringBackend {
        let local: SocketAddr = format!("{ip}:4791").parse().unwrap();
        let (sock, f) = crate::sys::roce_socket(local, true).unwrap();
        assert!(f.gro);
        UringBackend::with_options(sock, f.gro, opts).unwrap_or_else(|(_, e)| panic!("{e}"))
    }

    trait Concat {
        fn concat_bytes(&self) -> Vec<u8>;
    }

    impl Concat for Vec<(SocketAddr, IpAddr, Vec<u8>)> {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter()
                .flat_map(|(_, _, d)| d.iter().copied())
                .collect()
        }
    }

    fn collect(b: &mut UringBackend, want: usize) -> Vec<(SocketAddr, IpAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want && std::time::Instant::now() < end {
            b.recv_ready(&mut |f, t, d| got.push((f, t, d.to_vec())))
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn cmsg_and_name_parsing() {
        let mut c = Vec::new();
        for (level, ty, data) in [
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                vec![0, 0, 0, 0, 1, 2, 3, 4, 127, 0, 0, 9],
            ),
            (SOL_UDP, UDP_GRO, 1040i32.to_ne_bytes().to_vec()),
        ] {
            let mut h = vec![0u8; CMSG_HDR];
            h[..CMSG_LEVEL].copy_from_slice(&(CMSG_HDR + data.len()).to_ne_bytes());
            h[CMSG_LEVEL..CMSG_LEVEL + 4].copy_from_slice(&level.to_ne_bytes());
            h[CMSG_TYPE..CMSG_TYPE + 4].copy_from_slice(&ty.to_ne_bytes());
            c.extend(h);
            c.extend(&data);
            c.resize(cmsg_align(c.len()), 0);
        }
        assert_eq!(
            parse_cmsgs(&c),
            (Some("127.0.0.9".parse().unwrap()), Some(1040))
        );
        assert_eq!(parse_cmsgs(&c[..20]), (None, None), "truncated");
        let a = SockaddrStorage::from("127.1.2.3:4791".parse::<SocketAddr>().unwrap());
        // SAFETY: `as_ptr` points at `len()` initialised bytes of `a`, alive for this borrow.
        let bytes =
            unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.len() as usize) };
        assert_eq!(parse_name(bytes), Some("127.1.2.3:4791".parse().unwrap()));
        assert_eq!(parse_name(&bytes[..3]), None);
    }

    #[test]
    fn ring_fd_polls_readable_and_gro_splits() {
        let mut rx = backend("127.0.40.1", Options::default());
        let mut tx = backend("127.0.40.2", Options::default());
        assert!(rx.features().multishot_recv);
        assert_eq!(rx.recv_ready(&mut |_, _, _| {}).unwrap(), 0);
        let wait = rx.wait_fd().unwrap();
        // One batch of 10 packets of 1000 bytes and a shorter last one.
        let data: Vec<u8> = (0..10_500u32).map(|i| (i % 251) as u8).collect();
        tx.send(rx.sock.local_addr().unwrap(), &data, Some(1000))
            .unwrap();
        tx.flush().unwrap();
        let mut fds = [PollFd::new(wait.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
        assert_eq!(n, 1, "ring fd did not poll readable");
        let got = collect(&mut rx, 11);
        assert_eq!(got.len(), 11);
        let from: SocketAddr = "127.0.40.2:4791".parse().unwrap();
        let to: IpAddr = "127.0.40.1".parse().unwrap();
        let mut joined: Vec<u8> = Vec::new();
        for (f, t, d) in &got {
            assert_eq!((*f, *t), (from, to));
            joined.extend(d);
        }
        assert_eq!(joined, data);
        assert_eq!(got[10].2.len(), 500);
        let s = rx.stats();
        assert_eq!((s.rx_receives, s.rx_gro_receives), (1, 1), "{s:?}");
        assert_eq!(tx.stats().tx_gso_sends, 1);
    }

    /// The receive's completion work runs on the thread that armed it; while that thread
    /// sleeps, another one polling the ring's descriptor must still see the completion.
    #[test]
    fn ring_fd_wakes_while_arming_thread_sleeps() {
        let rx = backend("127.0.40.7", Options::default());
        let mut tx = backend("127.0.40.8", Options::default());
        let (back, rx_back) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let mut rx = rx;
            rx.recv_ready(&mut |_, _, _| {}).unwrap();
            back.send(rx).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        });
        let mut rx = rx_back.recv().unwrap();
        let wait = rx.wait_fd().unwrap();
        tx.send(rx.sock.local_addr().unwrap(), b"hello", None)
            .unwrap();
        tx.flush().unwrap();
        let t0 = std::time::Instant::now();
        let mut fds = [PollFd::new(wait.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(800u16)).unwrap();
        assert_eq!(n, 1, "ring fd did not poll readable");
        assert!(t0.elapsed() < Duration::from_millis(500));
        let got = collect(&mut rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, b"hello");
        sleeper.join().unwrap();
    }

    #[test]
    fn many_datagrams_recycle_buffers_and_rearm() {
        let mut rx = backend("127.0.40.3", Options::default());
        let mut tx = backend("127.0.40.4", Options::default());
        rx.recv_ready(&mut |_, _, _| {}).unwrap();
        let dst = rx.sock.local_addr().unwrap();
        // More datagrams than receive buffers, from different sizes so GRO cannot merge all.
        let mut total = 0;
        for round in 0..4 {
            for i in 0..100usize {
                tx.send(dst, &vec![i as u8; 100 + (i % 7) + round], None)
                    .unwrap();
                total += 1;
            }
            tx.flush().unwrap();
        }
        let got = collect(&mut rx, total);
        assert_eq!(got.len(), total, "{:?}", rx.stats());
        assert!(rx.stats().rx_arms >= 1);
    }

    #[test]
    fn ipv6_addresses_and_gro() {
        let open = |port: u16| {
            let local = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            let (sock, f) = crate::sys::roce_socket(local, true).ok()?;
            UringBackend::with_options(sock, f.gro, Options::default()).ok()
        };
        let (Some(mut rx), Some(mut tx)) = (open(47911), open(47912)) else {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        };
        rx.recv_ready(&mut |_, _, _| {}).unwrap();
        let data = vec![3u8; 4500];
        tx.send(rx.sock.local_addr().unwrap(), &data, Some(1500))
            .unwrap();
        tx.flush().unwrap();
        let got = collect(&mut rx, 3);
        assert_eq!(got.len(), 3);
        let from = SocketAddr::from((Ipv6Addr::LOCALHOST, 47912));
        for (f, t, d) in &got {
            assert_eq!(
                (*f, *t, d.len()),
                (from, IpAddr::V6(Ipv6Addr::LOCALHOST), 1500)
            );
        }
        assert_eq!(rx.stats().rx_gro_receives, 1);
    }

    #[test]
    fn busy_poll_receives_with_syscalls_and_never_arms() {
        let mut rx = backend("127.0.40.9", Options::default());
        let mut tx = backend("127.0.40.10", Options::default());
        rx.set_busy_poll(true);
        // The start-up probe armed (and cancelled) it once.
        let probe_arms = rx.stats().rx_arms;
        assert_eq!(rx.recv_ready(&mut |_, _, _| {}).unwrap(), 0);
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        tx.send(rx.sock.local_addr().unwrap(), &data, Some(1000))
            .unwrap();
        tx.flush().unwrap();
        let got = collect(&mut rx, 3);
        let lens: Vec<usize> = got.iter().map(|(_, _, d)| d.len()).collect();
        assert_eq!(lens, [1000, 1000, 500]);
        assert_eq!(got.concat_bytes(), data);
        assert_eq!(
            rx.stats().rx_arms,
            probe_arms,
            "the multishot receive stays off"
        );
        assert!(!rx.armed);
    }

    /// Under a progress thread only that thread arms the multishot receive (its completion
    /// work runs on the arming thread, under `COOP_TASKRUN` only when that thread enters the
    /// kernel); another thread receives with syscalls and leaves the re-arming to the owner.
    #[test]
    fn only_the_receive_owner_arms_the_multishot_receive() {
        let mut rx = backend("127.0.40.17", Options::default());
        let mut tx = backend("127.0.40.18", Options::default());
        assert!(
            rx.features().coop_taskrun,
            "kernel 5.19+ sets up COOP_TASKRUN"
        );
        let dst = rx.sock.local_addr().unwrap();
        let probe_arms = rx.stats().rx_arms;
        let other = std::thread::spawn(|| std::thread::current().id());
        let other = other.join().unwrap();
        // The progress thread not started yet, then started on another thread.
        for owner in [None, Some(other)] {
            rx.set_receive_owner(owner);
            tx.send(dst, b"not armed", None).unwrap();
            tx.flush().unwrap();
            let got = collect(&mut rx, 1);
            assert_eq!(got.len(), 1, "{owner:?}");
            assert_eq!(got[0].2, b"not armed");
            assert_eq!(rx.stats().rx_arms, probe_arms, "{owner:?}: armed");
            assert!(!rx.armed);
            assert!(rx.rx_pending(), "{owner:?}: the owner is not asked to arm");
        }
        // This thread is the owner: it arms, and the datagram comes through the ring.
        rx.set_receive_owner(Some(std::thread::current().id()));
        assert_eq!(rx.recv_ready(&mut |_, _, _| {}).unwrap(), 0);
        assert_eq!(rx.stats().rx_arms, probe_arms + 1);
        assert!(rx.armed && !rx.rx_pending());
        tx.send(dst, b"armed", None).unwrap();
        tx.flush().unwrap();
        let got = collect(&mut rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, b"armed");
        assert!(rx.stats().rx_receives >= 1 && rx.armed);
    }

    /// The probed GSO segment limit is exact, and the same when another device asks.
    #[test]
    fn gso_limit_is_the_kernels_and_kept() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let n = gso_max_segments(local);
        assert!(n == GSO_SEGMENTS_OLD || n == GSO_SEGMENTS_NEW, "{n}");
        // Asked again (another device), the answer is the same, and it is exact: the kernel
        // takes `n` one-byte segments in one send and refuses `n + 1`.
        assert_eq!(gso_max_segments(local), n);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = SockaddrStorage::from(s.local_addr().unwrap());
        let send = |count: usize| {
            nix::sys::socket::sendmsg(
                s.as_raw_fd(),
                &[std::io::IoSlice::new(&vec![0u8; count])],
                &[nix::sys::socket::ControlMessage::UdpGsoSegments(&1u16)],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                Some(&to),
            )
        };
        assert_eq!(send(n), Ok(n));
        assert_eq!(send(n + 1), Err(nix::errno::Errno::EINVAL));
    }

    /// A busy-polled sender's socket takes the GSO size of its steady batches (sent with
    /// `sendto` then); a datagram longer than that size, a batch of another size and a send
    /// queued through the ring still arrive in their own shape.
    #[test]
    fn busy_poll_sends_follow_the_gso_size_and_other_sends_keep_their_shape() {
        let mut rx = backend("127.0.40.11", Options::default());
        let mut tx = backend("127.0.40.12", Options::default());
        rx.set_busy_poll(true);
        tx.set_busy_poll(true);
        let dst = rx.sock.local_addr().unwrap();
        let send = |tx: &mut UringBackend, data: &[u8], seg: Option<usize>| {
            let b = tx.tx_buffer().unwrap();
            b[..data.len()].copy_from_slice(data);
            tx.send_written(dst, data.len(), seg).unwrap();
        };
        // A ping-pong's WRITE (40 B) and held ACK (20 B), six times.
        for k in 0..6u8 {
            send(&mut tx, &[k; 60], Some(40));
        }
        assert_eq!(
            tx.gso.sock, 40,
            "the socket follows after {GSO_FOLLOW} batches"
        );
        send(&mut tx, &[7; 100], None);
        send(&mut tx, &[8; 90], Some(30));
        send(&mut tx, &[9; 30], None);
        // Through the ring (the copying `send` path queues a SENDMSG).
        tx.send(dst, &[10; 100], None).unwrap();
        tx.flush().unwrap();
        let got = collect(&mut rx, 12 + 1 + 3 + 1 + 1);
        let shape: Vec<(u8, usize)> = got.iter().map(|(_, _, d)| (d[0], d.len())).collect();
        let mut want = Vec::new();
        for k in 0..6u8 {
            want.extend([(k, 40), (k, 20)]);
        }
        want.extend([(7, 100), (8, 30), (8, 30), (8, 30), (9, 30), (10, 100)]);
        assert_eq!(shape, want);
        assert_eq!(tx.stats().tx_gso_sends, 7);
        assert!(tx.features().gso);
    }

    /// Under `SQPOLL` the kernel thread takes the sends: more batches than send buffers (so
    /// the sender waits for completions the thread posts) arrive whole and in order, also
    /// after the thread went to sleep and had to be woken by the next submission.
    #[test]
    fn sq_poll_sends_arrive_in_order_and_wake_the_thread() {
        let sq = Options {
            sq_poll: Some(Duration::from_millis(1)),
            ..Options::default()
        };
        let (mut rx, mut tx, mut got) = batches_through("127.0.40.13", "127.0.40.14", sq);
        assert!(tx.features().sq_poll && !rx.features().sq_poll);
        let dst = rx.sock.local_addr().unwrap();
        let batches = 3 * TX_SLOTS as u32;
        // Wait (bounded) until the thread sleeps; the next submission must wake it.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !tx.ring.submission().need_wakeup() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            tx.ring.submission().need_wakeup(),
            "the SQ thread never slept"
        );
        for b in batches..batches + 4 {
            tx.send(dst, &batch(b), Some(200)).unwrap();
        }
        tx.flush().unwrap();
        got.extend(collect(&mut rx, 16));
        assert_eq!(numbers(&got), (0..4 * (batches + 4)).collect::<Vec<u32>>());
        assert_eq!(tx.stats().tx_gso_sends, u64::from(batches + 4));
    }

    /// What [`collect`] returns.
    type Got = Vec<(SocketAddr, IpAddr, Vec<u8>)>;

    /// A receiving back end on `rx_ip` and a sending one on `tx_ip` with `opts`, and what the
    /// receiver got of 3 × [`TX_SLOTS`] [`batch`]es sent (more than there are send buffers,
    /// so the sender waits for its sends to complete).
    fn batches_through(
        rx_ip: &str,
        tx_ip: &str,
        opts: Options,
    ) -> (UringBackend, UringBackend, Got) {
        let mut rx = backend(rx_ip, Options::default());
        let mut tx = backend(tx_ip, opts);
        let dst = rx.sock.local_addr().unwrap();
        let batches = 3 * TX_SLOTS as u32;
        for b in 0..batches {
            tx.send(dst, &batch(b), Some(200)).unwrap();
        }
        tx.flush().unwrap();
        let got = collect(&mut rx, 4 * batches as usize);
        (rx, tx, got)
    }

    /// Batch `b` of the ordering tests: 4 datagrams of 200 bytes, each starting with its
    /// number 4b + i.
    fn batch(b: u32) -> Vec<u8> {
        (0..4u32)
            .flat_map(|i| {
                let mut d = vec![(b % 251) as u8; 200];
                d[..4].copy_from_slice(&(4 * b + i).to_le_bytes());
                d
            })
            .collect()
    }

    /// The numbers of datagrams received from [`batch`]es, in order.
    fn numbers(got: &[(SocketAddr, IpAddr, Vec<u8>)]) -> Vec<u32> {
        got.iter()
            .map(|(_, _, d)| {
                assert_eq!(d.len(), 200);
                u32::from_le_bytes(d[..4].try_into().unwrap())
            })
            .collect()
    }

    /// The send thread (`tx_thread`, which replaces `SQPOLL`): batches through every slot
    /// arrive in order, each slot comes back with its result counted (the bytes, or the error
    /// of a send the kernel refuses), and sends queued just before the back end is dropped
    /// still go out.
    #[test]
    fn tx_thread_sends_in_order_counts_results_and_sends_the_rest_at_drop() {
        let opts = Options {
            tx_thread: true,
            sq_poll: Some(Duration::from_millis(1)),
            ..Options::default()
        };
        let (mut rx, mut tx, mut got) = batches_through("127.0.40.15", "127.0.40.16", opts);
        assert!(tx.features().tx_thread && !tx.features().sq_poll);
        let dst = rx.sock.local_addr().unwrap();
        let batches = 3 * TX_SLOTS as u32;
        // Longer than an IPv4 datagram can be: the thread's `sendmsg` fails with EMSGSIZE.
        tx.send(dst, &vec![7; 65_520], None).unwrap();
        assert!(tx.drain_sends(Duration::from_secs(5)).unwrap());
        let st = tx.stats();
        assert_eq!((st.tx_errors, st.tx_dropped), (1, 0));
        assert_eq!(st.tx_bytes, u64::from(batches) * 800);
        assert_eq!(tx.free.len(), TX_SLOTS);
        for b in batches..batches + 8 {
            tx.send(dst, &batch(b), Some(200)).unwrap();
        }
        drop(tx);
        got.extend(collect(&mut rx, 32));
        assert_eq!(numbers(&got), (0..4 * (batches + 8)).collect::<Vec<u32>>());
    }

    #[test]
    fn syscall_receive_fallback() {
        let mut rx = backend(
            "127.0.40.5",
            Options {
                multishot: false,
                ..Options::default()
            },
        );
        let mut tx = backend("127.0.40.6", Options::default());
        assert!(!rx.features().multishot_recv);
        let data = vec![7u8; 3000];
        tx.send(rx.sock.local_addr().unwrap(), &data, Some(1000))
            .unwrap();
        tx.flush().unwrap();
        let got = collect(&mut rx, 3);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(_, _, d)| d.len() == 1000));
    }
}

//! Drivers: move datagrams between a UDP socket and the engine. Each back end implements
//! [`Backend`]; the device's progress loop is the same for all of them.

pub(crate) mod connected;
pub mod faults;
pub(crate) mod place;
pub mod raw;
pub(crate) mod region;
pub(crate) mod split;
pub(crate) mod syscall;
pub(crate) mod tx_thread;
pub(crate) mod uring;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

/// Which back end drives the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendKind {
    /// One `io_uring` per device: a multishot `recvmsg` over a ring of provided 64 KiB
    /// buffers with UDP GRO, and batched `sendmsg` submissions with UDP GSO (default). Falls
    /// back to `recvmsg` syscalls for receiving, or to [`BackendKind::Syscall`] altogether,
    /// where the kernel lacks what it needs.
    #[default]
    Uring,
    /// One `sendmsg`/`recvmsg` per packet, no batching: the rxe-like baseline.
    Syscall,
}

impl BackendKind {
    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Syscall => "syscall",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" => Ok(BackendKind::Uring),
            "syscall" => Ok(BackendKind::Syscall),
            other => Err(format!("unknown back end '{other}' (uring, syscall)")),
        }
    }
}

/// What the driver of a device does, as found when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverFeatures {
    /// The back end in use (the syscall one when io_uring was asked for but is unusable).
    pub backend: BackendKind,
    /// Receiving with a multishot `recvmsg` over a provided-buffer ring (else `recvmsg`
    /// syscalls).
    pub multishot_recv: bool,
    /// UDP GRO is on: one receive may carry several packets of one size.
    pub gro: bool,
    /// Sends of several packets go out as one UDP GSO `sendmsg`.
    pub gso: bool,
    /// io_uring submissions are taken by a kernel thread (`SQPOLL`, see
    /// [`crate::DeviceConfig::sq_poll`]).
    pub sq_poll: bool,
    /// Sends are made by a send thread of the back end's own (see
    /// [`crate::DeviceConfig::tx_thread`]).
    pub tx_thread: bool,
    /// The io_uring is set up with `COOP_TASKRUN`: a datagram's arrival does not interrupt
    /// the running thread that receives it.
    pub coop_taskrun: bool,
}

/// Counters of the driver (the engine's own are in [`crate::DeviceCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DriverStats {
    /// Receives that returned a datagram or a GRO super-buffer.
    pub rx_receives: u64,
    /// Datagrams handed to the engine (a GRO super-buffer holds several).
    pub rx_datagrams: u64,
    /// Receives that held more than one datagram, coalesced by UDP GRO.
    pub rx_gro_receives: u64,
    /// Receives dropped because the buffer or the control data was too small.
    pub rx_truncated: u64,
    /// Times the multishot receive ran out of provided buffers (it is then re-armed).
    pub rx_no_buffers: u64,
    /// Times the multishot receive was armed.
    pub rx_arms: u64,
    /// Zero-copy receive: datagrams peeked (`MSG_PEEK`) to plan where their payload goes
    /// (io_uring back end, thread progress, while an inbound message is in progress).
    pub rx_place_peeks: u64,
    /// Datagrams received with payload placed straight into regions.
    pub rx_place_receives: u64,
    /// Among them, datagrams planned without a peek (the previous one went as predicted).
    pub rx_place_unpeeked: u64,
    /// Payload bytes planned into regions, at most each datagram's length (the packets the
    /// engine then accepted without a copy: `DeviceCounters::rx_placed`).
    pub rx_placed_bytes: u64,
    /// `sendmsg` operations (a GSO batch counts once).
    pub tx_sends: u64,
    /// GSO batches among them.
    pub tx_gso_sends: u64,
    /// UDP payload bytes the kernel accepted (sends that completed; a GSO batch counts all
    /// its packets).
    pub tx_bytes: u64,
    /// Sends lost to a full socket buffer or an unreachable peer, as a network would lose them.
    pub tx_dropped: u64,
    /// Zero-copy sends' notifications (only with `SENDMSG_ZC`: [`raw::RawDriver::open_send_zc`]).
    pub tx_zc_notifs: u64,
    /// Among them, those where the kernel copied the data after all.
    pub tx_zc_copied: u64,
    /// Sends whose completion reported an error other than a full buffer or an unreachable
    /// peer (an error returned to the device directly is counted by the device instead).
    pub tx_errors: u64,
    /// `io_uring_enter` calls made to submit or wait.
    pub ring_enters: u64,
    /// Sends made from a socket connected to the peer (`DeviceConfig::connected_tx`; counted
    /// in `tx_sends` too).
    pub tx_connected: u64,
    /// Datagrams received on a socket connected to their peer (`DeviceConfig::connected_tx`;
    /// counted in `rx_datagrams` too).
    pub rx_connected: u64,
    /// Among those, receives made with a plain `recv` (no GRO segment size asked for) and
    /// split by the length the first packet's headers state (`driver/connected.rs`).
    pub rx_by_headers: u64,
    /// Among those, receives whose first packet stated no length, split at the segment size
    /// whose every packet's ICRC verified (or handed on whole where none did).
    pub rx_segment_searches: u64,
    /// Times a send found every send buffer in flight and waited for one to come back: the
    /// kernel's sends (or the send thread) could not keep up with the engine.
    pub tx_slot_waits: u64,
    /// What fault injection did to outgoing packets (all zero without `UROCE_FAULTS`).
    pub faults: faults::FaultCounters,
}

impl DriverStats {
    /// Counts one send (`sendmsg`, or `send` from a connected socket), a GSO batch if `gso`.
    pub(crate) fn count_send(&mut self, gso: bool) {
        self.tx_sends += 1;
        self.tx_gso_sends += u64::from(gso);
    }
}

/// A received datagram's addresses and bytes, handed to the engine.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(SocketAddr, IpAddr, &[u8]);

/// The largest transmit (a datagram or a GSO batch): the largest UDP payload over IPv4
/// (65535 - 20 - 8), so a batch the engine forms is never too long for the kernel.
pub(crate) const TX_MAX: usize = 65507;

/// What the progress loop needs from a back end.
pub(crate) trait Backend: Send {
    /// Sends one datagram, or a GSO batch of `segment`-byte packets (the last may be shorter).
    fn send(&mut self, dst: SocketAddr, data: &[u8], segment: Option<usize>) -> io::Result<()>;
    /// The buffer ([`TX_MAX`] bytes) the engine writes its next transmit into, so that the
    /// packets are built where the kernel reads them (no copy between engine and driver).
    /// The same buffer is returned until [`Backend::send_written`] sends it.
    fn tx_buffer(&mut self) -> io::Result<&mut [u8]>;
    /// Sends the first `len` bytes of [`Backend::tx_buffer`], as [`Backend::send`] would.
    fn send_written(
        &mut self,
        dst: SocketAddr,
        len: usize,
        segment: Option<usize>,
    ) -> io::Result<()>;
    /// Pushes out sends queued by [`Backend::send`].
    fn flush(&mut self) -> io::Result<()>;
    /// Flushes, then waits up to `timeout` until every send has completed (so that
    /// [`DriverStats::tx_bytes`] counts them all); false if some were still in flight.
    fn drain_sends(&mut self, _timeout: std::time::Duration) -> io::Result<bool> {
        self.flush().map(|()| true)
    }
    /// Hands every datagram already received (up to a bound) to `sink` without blocking;
    /// returns how many.
    fn recv_ready(&mut self, sink: Sink<'_>) -> io::Result<usize>;
    /// Like [`Backend::recv_ready`], handing datagrams to `eng` directly, so that a back end
    /// may have the kernel place payloads straight into regions as the engine plans
    /// ([`uroce_proto::Device::plan_placement`]). Used when nothing else (capture, steering)
    /// must see each datagram's bytes first.
    fn recv_ready_placing(
        &mut self,
        eng: &mut uroce_proto::Device,
        now: uroce_proto::Instant,
    ) -> io::Result<usize> {
        self.recv_ready(&mut |from, to, bytes| eng.handle_datagram(now, from, to, bytes))
    }
    /// A descriptor that polls readable when [`Backend::recv_ready`] has work.
    fn wait_fd(&self) -> io::Result<OwnedFd>;
    /// Most packets the engine should put in one transmit batch.
    fn max_segments(&self) -> usize;
    /// Whether received data is already held by the back end (taken off the descriptor of
    /// [`Backend::wait_fd`] by a send path), so [`Backend::recv_ready`] has work although
    /// the descriptor may not poll readable.
    fn rx_pending(&self) -> bool {
        false
    }
    /// Told once at open when the device is busy-polled ([`crate::Progress::Polled`]):
    /// [`Backend::recv_ready`] is then called in a tight loop and may spend a syscall on
    /// fetching completions rather than wait for the kernel to notify.
    fn set_busy_poll(&mut self, _on: bool) {}
    /// Told at open by a device with a progress thread (`None`: it is about to start), then
    /// by that thread (its id): from then on only the progress thread arms receive
    /// operations whose completion work the kernel runs on the arming thread; others
    /// receive with syscalls, and [`Backend::rx_pending`] asks the owner to re-arm.
    fn set_receive_owner(&mut self, _owner: Option<std::thread::ThreadId>) {}
    /// What the back end does.
    fn features(&self) -> DriverFeatures;
    /// Its counters.
    fn stats(&self) -> DriverStats;
}

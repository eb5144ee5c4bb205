//! uroce: software RDMA in user space. RoCEv2 on the wire, the verbs model in a safe Rust API,
//! and drivers that move the engine's datagrams over a UDP socket.
//!
//! ```no_run
//! use uroce::{Device, DeviceConfig, Access, QpType, QpCap};
//! let dev = Device::open(DeviceConfig::new("127.0.0.1".parse().unwrap()))?;
//! let pd = dev.alloc_pd();
//! let mr = pd.reg_mr(0x1000, 4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
//! let cq = dev.create_cq(256, None)?;
//! let qp = pd.create_qp(QpType::Rc, &cq, &cq, None, QpCap::default())?;
//! # Ok::<(), uroce::Error>(())
//! ```
//!
//! Memory regions are allocated by uroce and hold their bytes in atomic words, because a peer
//! may write them at any time while the application reads them: see [`MemoryRegion`].

mod coord;
pub mod device;
pub mod driver;
mod engine_lock;
pub mod error;
pub mod events;
mod membership;
pub mod netif;
pub mod stats;
pub mod steer;
mod sys;
pub mod verbs;

pub use device::{Device, DeviceConfig, Progress};
pub use driver::faults::{FaultCounters, Faults};
pub use driver::{BackendKind, DriverFeatures, DriverStats};
pub use engine_lock::LockWaits;
pub use error::{Error, Result};
pub use events::{AsyncEvent, AsyncEvents};
pub use steer::{SteerCounters, SteerInfo};
pub use verbs::{
    AddressHandle, CompletionChannel, CompletionQueue, Connect, MemoryRegion, ProtectionDomain,
    QueuePair, SharedReceiveQueue,
};

pub use uroce_proto::time::ack_timeout;
pub use uroce_proto::{
    Access, Completion, DeviceAttr, DeviceCounters, Mtu, Payload, QpAttr, QpCap, QpCounters,
    QpState, QpType, RecvWr, Resource, SendFlags, SendOp, SendWr, Sge, UdDest, Usage, WcOpcode,
    WcStatus,
};

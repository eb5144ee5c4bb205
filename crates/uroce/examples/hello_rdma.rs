//! The smallest complete uroce program: two devices on this machine (127.0.0.1 and
//! 127.0.0.2 unless given), an RC queue pair between them, one RDMA WRITE, one RDMA READ and
//! one SEND, each checked.
//!
//! ```text
//! cargo run -p uroce --example hello_rdma -- [IP_A IP_B]
//! ```

use std::net::IpAddr;
use std::time::Duration;

use uroce::{
    Access, Connect, Device, DeviceConfig, Payload, QpCap, QpType, RecvWr, SendOp, SendWr, WcStatus,
};

/// Runs the example between `a` and `b`; returns an error text on any failure.
pub fn run(a: IpAddr, b: IpAddr) -> Result<(), String> {
    let e = |x: uroce::Error| x.to_string();
    let all = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    // One device, PD, memory region, CQ and RC QP per side.
    let da = Device::open(DeviceConfig::new(a)).map_err(e)?;
    let db = Device::open(DeviceConfig::new(b)).map_err(e)?;
    let (pa, pb) = (da.alloc_pd(), db.alloc_pd());
    let ma = pa.reg_mr(0x1000, 8192, all).map_err(e)?;
    let mb = pb.reg_mr(0x1000, 8192, all).map_err(e)?;
    let ca = da.create_cq(16, None).map_err(e)?;
    let cb = db.create_cq(16, None).map_err(e)?;
    let qa = pa
        .create_qp(QpType::Rc, &ca, &ca, None, QpCap::default())
        .map_err(e)?;
    let qb = pb
        .create_qp(QpType::Rc, &cb, &cb, None, QpCap::default())
        .map_err(e)?;
    // Exchange (here: just pass) QP numbers and PSNs, and connect.
    qa.connect(&Connect::new(b, qb.qpn(), 1, 2)).map_err(e)?;
    qb.connect(&Connect::new(a, qa.qpn(), 2, 1)).map_err(e)?;
    let wait = |cq: &uroce::CompletionQueue| -> Result<(), String> {
        let c = cq.wait(1, Duration::from_secs(10)).map_err(e)?;
        match c.first() {
            Some(c) if c.status == WcStatus::Success => Ok(()),
            other => Err(format!("completion {other:?}")),
        }
    };

    // RDMA WRITE "hello" into b's region.
    ma.write(0, b"hello, RDMA");
    let write = SendOp::RdmaWrite {
        remote_addr: mb.addr() + 100,
        rkey: mb.rkey(),
    };
    qa.post_send(SendWr::new(1, write, Payload::Sgl(vec![ma.sge(0, 11)])))
        .map_err(e)?;
    wait(&ca)?;
    let mut got = [0u8; 11];
    mb.read(100, &mut got);
    if &got != b"hello, RDMA" {
        return Err(format!("WRITE delivered {got:?}"));
    }

    // RDMA READ it back into a's region at 4096.
    let read = SendOp::RdmaRead {
        remote_addr: mb.addr() + 100,
        rkey: mb.rkey(),
    };
    qa.post_send(SendWr::new(2, read, Payload::Sgl(vec![ma.sge(4096, 11)])))
        .map_err(e)?;
    wait(&ca)?;
    ma.read(4096, &mut got);
    if &got != b"hello, RDMA" {
        return Err(format!("READ returned {got:?}"));
    }

    // SEND into a receive b posted.
    qb.post_recv(RecvWr {
        wr_id: 7,
        sgl: vec![mb.sge(2048, 64)],
    })
    .map_err(e)?;
    qa.post_send(SendWr::new(
        3,
        SendOp::Send,
        Payload::Inline(b"bye".to_vec()),
    ))
    .map_err(e)?;
    wait(&ca)?;
    wait(&cb)?;
    let mut bye = [0u8; 3];
    mb.read(2048, &mut bye);
    if &bye != b"bye" {
        return Err(format!("SEND delivered {bye:?}"));
    }
    Ok(())
}

#[allow(dead_code)]
fn main() {
    let args: Vec<IpAddr> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (a, b) = match args.as_slice() {
        [a, b] => (*a, *b),
        _ => (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])),
    };
    match run(a, b) {
        Ok(()) => {
            println!("hello_rdma: WRITE, READ and SEND between {a} and {b}: all data checked")
        }
        Err(msg) => {
            eprintln!("hello_rdma: {msg}");
            std::process::exit(1);
        }
    }
}

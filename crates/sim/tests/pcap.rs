//! A simulated run written to a pcap file through the simulator tap, read back: every frame is
//! a well-formed IPv4/UDP/RoCEv2 datagram whose ICRC verifies (exactly with the recorded IPv4
//! ID, and by solving for the ID from 0 as a receiver must), in wire order with virtual-time
//! stamps.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::Duration;

use uroce_capture::frame::decapsulate;
use uroce_capture::pcap::PcapReader;
use uroce_proto::{Payload, RecvWr, SendOp, SendWr, WcStatus};
use uroce_sim::scenario::{capture_pcap, pair, settle, wait_completions, PairOpts};
use uroce_sim::{Link, Sim};
use uroce_wire::{IcrcCheck, Ipv4IdMode, PacketRepr};

#[test]
fn pcap_of_a_run_reads_back_with_valid_icrcs() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("uroce_sim_run.pcap");
    let mut sim = Sim::new(
        90,
        Link {
            loss: 0.02,
            ..Link::default()
        },
    );
    let (a, b) = pair(&mut sim, &PairOpts::default());
    let cap = capture_pcap(&mut sim, BufWriter::new(File::create(&path).unwrap())).unwrap();
    let data = a.fill(0, 20_000, 1);
    b.fill(30_000, 5000, 2);
    sim.dev(b.host)
        .post_recv(
            b.qpn,
            RecvWr {
                wr_id: 1,
                sgl: vec![b.sge(50_000, 4096)],
            },
        )
        .unwrap();
    let ops = [
        SendOp::RdmaWrite {
            remote_addr: b.base,
            rkey: b.keys.rkey,
        },
        SendOp::RdmaRead {
            remote_addr: b.base + 30_000,
            rkey: b.keys.rkey,
        },
        SendOp::SendWithImm(5),
        SendOp::FetchAdd {
            remote_addr: b.base + 60_000,
            rkey: b.keys.rkey,
            add: 1,
        },
    ];
    let lens = [20_000, 5000, 3000, 8];
    let offs = [0, 30_000, 0, 40_000];
    for (i, op) in ops.into_iter().enumerate() {
        let w = SendWr::new(i as u64, op, Payload::Sgl(vec![a.sge(offs[i], lens[i])]));
        sim.post_send(a.host, a.qpn, w).unwrap();
    }
    let c = wait_completions(&mut sim, &a, 4, Duration::from_secs(1));
    assert!(c.iter().all(|c| c.status == WcStatus::Success), "{c:?}");
    settle(&mut sim, Duration::from_millis(1));
    assert_eq!(b.read(0, 20_000), data);
    let written = cap.frames();
    let mut w = cap.finish().unwrap();
    w.flush().unwrap();
    drop(w);
    assert_eq!(
        written, sim.stats.sent,
        "every packet put on the wire, lost ones included"
    );

    let mut r = PcapReader::new(BufReader::new(File::open(&path).unwrap())).unwrap();
    let link = r.link_type();
    let (mut n, mut nonzero_id, mut last_ts) = (0u64, 0u64, Duration::ZERO);
    while let Some(f) = r.next_frame() {
        let f = f.unwrap();
        assert!(f.timestamp >= last_ts, "frames in time order");
        last_ts = f.timestamp;
        let rf = decapsulate(link, &f.data).unwrap();
        assert_eq!(rf.ipv4_checksum_ok, Some(true));
        assert_eq!(rf.dst_port(), uroce_wire::ROCE_UDP_PORT);
        let id = rf.ipv4_id().unwrap();
        assert!(id < 64, "GSO segment index as ID: {id}");
        nonzero_id += u64::from(id != 0);
        assert_eq!(
            rf.ctx.verify(rf.payload, Ipv4IdMode::Exact),
            Ok(IcrcCheck::Valid),
            "frame {} verifies exactly with its recorded ID",
            f.index
        );
        let solved = rf
            .ctx
            .with_ipv4_id(0)
            .verify(rf.payload, Ipv4IdMode::SolveBelow(64));
        let want = if id == 0 {
            IcrcCheck::Valid
        } else {
            IcrcCheck::SolvedIpv4Id(id)
        };
        assert_eq!(
            solved,
            Ok(want),
            "frame {}: solving from ID 0 finds the same ID",
            f.index
        );
        let (repr, _) = PacketRepr::parse_bytes(rf.payload).unwrap();
        let peer = if rf.src() == sim.hosts[a.host].ip {
            b.qpn
        } else {
            a.qpn
        };
        assert_eq!(
            repr.bth.dest_qp, peer,
            "frame {} addressed to the peer QP",
            f.index
        );
        n += 1;
    }
    assert_eq!(n, written);
    assert!(nonzero_id > 0, "the 20 kB WRITE went out as GSO batches");
    assert!(sim.stats.lost > 0, "the run exercised loss and recovery");
}

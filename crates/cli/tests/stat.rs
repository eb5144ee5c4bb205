//! `uroce stat` lists the counters of a device another process has open, and forgets it once
//! closed.

use std::process::Command;
use std::time::{Duration, Instant};

fn stat(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_uroce"))
        .arg("stat")
        .env("UROCE_STATS_DIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn stat_shows_an_open_device_and_drops_a_closed_one() {
    let dir = std::env::temp_dir().join(format!("uroce-stat-test-{}", std::process::id()));
    std::env::set_var("UROCE_STATS_DIR", &dir);
    let dev = uroce::Device::open(uroce::DeviceConfig::new("127.0.24.1".parse().unwrap())).unwrap();
    let pd = dev.alloc_pd();
    let cq = dev.create_cq(16, None).unwrap();
    let qp = pd
        .create_qp(uroce::QpType::Rc, &cq, &cq, None, uroce::QpCap::default())
        .unwrap();
    let want = format!("device 127.0.24.1:4791 pid {}", std::process::id());
    let end = Instant::now() + Duration::from_secs(10);
    let mut text = stat(&dir);
    while !(text.contains(&want) && text.contains(&format!("qp {:#08x}", qp.qpn())))
        && Instant::now() < end
    {
        std::thread::yield_now();
        text = stat(&dir);
    }
    assert!(text.contains(&want), "{text}");
    assert!(text.contains("rx_packets"), "{text}");
    drop(qp);
    drop(cq);
    drop(pd);
    drop(dev);
    assert!(stat(&dir).contains("no uroce device is open"));
    let _ = std::fs::remove_dir_all(&dir);
}

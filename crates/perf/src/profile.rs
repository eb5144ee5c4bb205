//! Where the cycles go: a summary of `perf report --stdio -n --no-children --sort comm,dso,sym
//! -g none` of `perf record -e cpu-clock` recordings of the two sides of a `uroce bench` run
//! (`scripts/profile.sh`). Several reports are merged by sample counts (`-n`; without it by
//! percent). Only samples of uroce processes and of the kernel's softirq threads count; the
//! shares are of those samples.

use std::fmt::Write as _;

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Samples (the `-n` column), or the percent of all samples without it.
    pub percent: f64,
    /// Command (thread) name.
    pub comm: String,
    /// Kernel (`[k]`) or user space.
    pub kernel: bool,
    /// Symbol.
    pub symbol: String,
}

/// Parses the report lines ("  12.34%  [count]  comm  dso  [k] symbol"); other lines are
/// skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let mut percent: f64 = pct.trim().parse().ok()?;
            let mut words = rest.split_whitespace().peekable();
            if let Some(n) = words.peek().and_then(|w| w.parse::<u64>().ok()) {
                percent = n as f64;
                words.next();
            }
            let comm = words.next()?.to_string();
            let rest: Vec<&str> = words.collect();
            let at = rest.iter().position(|w| *w == "[k]" || *w == "[.]")?;
            Some(Sample {
                percent,
                comm,
                kernel: rest[at] == "[k]",
                symbol: rest[at + 1..].join(" "),
            })
        })
        .collect()
}

/// Whether a sample belongs to the benchmark (the uroce processes and their threads, the
/// softirq threads).
pub fn ours(s: &Sample) -> bool {
    s.comm.starts_with("uroce") || s.comm.starts_with("ksoftirqd")
}

/// The categories, first match wins (symbol substrings).
pub const CATEGORIES: [(&str, &[&str]); 12] = [
    ("ICRC / checksums", &["crc32", "Crc32", "crc_", "csum"]),
    (
        "copies",
        &[
            "RegionMemory",
            "copy_user",
            "copy_from_user",
            "copy_to_user",
            "check_object_size",
            "memcpy",
            "memmove",
            "copy_to_iter",
            "copy_from_iter",
            "copy_page",
            "rep_mov",
            "_copyin",
            "_copyout",
        ],
    ),
    (
        "io_uring",
        &[
            "io_uring",
            "io_submit",
            "io_issue",
            "io_recv",
            "io_send",
            "io_req",
            "io_cqe",
            "io_sq",
            "io_wq",
            "__io_",
            "io_poll",
            "io_buffer",
            "io_kbuf",
            "io_ring",
        ],
    ),
    (
        "syscall entry/exit",
        &[
            "entry_SYSCALL",
            "fdget",
            "iovec",
            "sockfd_lookup",
            "syscall_exit",
            "do_syscall",
            "syscall_return",
            "__x64_sys",
            "exit_to_user",
            "__sys_",
        ],
    ),
    (
        "locking / wake-ups",
        &[
            "spin_lock",
            "spin_unlock",
            "mutex",
            "futex",
            "wake_up",
            "try_to_wake",
            "rwsem",
            "irqrestore",
            "Mutex",
            "lock_sock",
            "release_sock",
            "RwLock",
        ],
    ),
    (
        "kernel UDP/IP send",
        &[
            "udp_send",
            "fib_",
            "ip_route",
            "udp_sendmsg",
            "ip_make_skb",
            "ip_append",
            "ip_output",
            "ip_finish_output",
            "ip_local_out",
            "ip6_",
            "dev_queue_xmit",
            "dev_hard_start_xmit",
            "veth_xmit",
            "sch_direct",
            "neigh_",
            "__ip_",
            "ip_send",
            "skb_segment",
            "udp4_ufo",
            "__udp_gso",
            "udp_gso",
            "validate_xmit",
        ],
    ),
    (
        "kernel UDP/IP receive",
        &[
            "udp_rcv",
            "udp_recvmsg",
            "__udp4_lib",
            "udp_queue",
            "udp_unicast",
            "__skb_recv_udp",
            "skb_recv",
            "ip_rcv",
            "ip_local_deliver",
            "netif_receive",
            "netif_rx",
            "process_backlog",
            "net_rx_action",
            "veth_poll",
            "gro",
            "napi",
            "sock_recvmsg",
            "sock_def_readable",
            "udp_gro",
            "__udp_enqueue",
            "skb_consume_udp",
            "ip_sublist",
            "ip_list_rcv",
        ],
    ),
    (
        "skb / memory alloc+free",
        &[
            "kmem_cache",
            "alloc_skb",
            "kfree_skb",
            "skb_release",
            "slab",
            "kmalloc",
            "kfree",
            "__alloc_pages",
            "free_unref",
            "page_frag",
            "skb_free",
            "consume_skb",
            "__build_skb",
            "napi_alloc",
            "malloc",
            "free",
        ],
    ),
    (
        "clock reads",
        &["clock_gettime", "Instant", "Timespec", "ktime_get"],
    ),
    (
        "scheduler / yield / idle",
        &[
            "yield",
            "schedule",
            "finish_task_switch",
            "pick_next",
            "idle",
            "halt",
            "do_idle",
            "enqueue_task",
            "dequeue_task",
            "update_curr",
            "hrtimer",
            "tick_",
            "cpuidle",
        ],
    ),
    (
        "uroce engine",
        &[
            "uroce_proto",
            "uroce_wire",
            "uroce::",
            "uroce_cli",
            "uroce_capture",
        ],
    ),
    ("other user space", &[]),
];

/// The category of a sample.
pub fn category(s: &Sample) -> &'static str {
    for (name, words) in CATEGORIES.iter().take(CATEGORIES.len() - 1) {
        if words.iter().any(|w| s.symbol.contains(w)) {
            // Copies split by side: the kernel's between user memory and skbs, and the
            // engine's between MRs and packet buffers (RegionMemory) or memcpy.
            return match (*name, s.kernel) {
                ("copies", true) => "copies, kernel (user ↔ skb)",
                ("copies", false) => "copies, user space (MR ↔ packet buffers)",
                _ => name,
            };
        }
    }
    if s.kernel {
        "other kernel"
    } else {
        "other user space"
    }
}

/// (category, percent of our samples).
pub type CategoryShare = (&'static str, f64);
/// (symbol, percent of our samples, category).
pub type SymbolShare = (String, f64, &'static str);

/// Shares of our samples per category, largest first, and the top symbols.
pub fn summarise(texts: &[&str], top: usize) -> (Vec<CategoryShare>, Vec<SymbolShare>) {
    let ours: Vec<Sample> = texts.iter().flat_map(|t| parse(t)).filter(ours).collect();
    let total: f64 = ours.iter().map(|s| s.percent).sum();
    if total <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    let mut cats: Vec<CategoryShare> = Vec::new();
    // Symbols merged across threads.
    let mut syms: Vec<SymbolShare> = Vec::new();
    for s in &ours {
        let c = category(s);
        let share = s.percent / total * 100.0;
        match cats.iter_mut().find(|x| x.0 == c) {
            Some(x) => x.1 += share,
            None => cats.push((c, share)),
        }
        let name = format!("{}{}", s.symbol, if s.kernel { " [k]" } else { "" });
        match syms.iter_mut().find(|x| x.0 == name) {
            Some(x) => x.1 += share,
            None => syms.push((name, share, c)),
        }
    }
    cats.sort_by(|a, b| b.1.total_cmp(&a.1));
    syms.sort_by(|a, b| b.1.total_cmp(&a.1));
    syms.truncate(top);
    (cats, syms)
}

/// Markdown tables of [`summarise`] for one labelled profile.
pub fn markdown(label: &str, texts: &[&str], top: usize) -> String {
    let (cats, syms) = summarise(texts, top);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "#### {label}\n\n| where | share of the benchmark's samples |\n|---|---|"
    );
    for (c, p) in &cats {
        let _ = writeln!(o, "| {c} | {p:.1} % |");
    }
    let _ = writeln!(o, "\n| top symbol | share | category |\n|---|---|---|");
    for (s, p, c) in &syms {
        let _ = writeln!(o, "| `{}` | {p:.1} % | {c} |", s.replace('|', "\\|"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# Samples: 10K of event 'cpu-clock'
#
# Overhead  Command          Shared Object      Symbol
#
    30.00%  uroce-10.66.190  [kernel.kallsyms]  [k] copy_user_generic_string
    20.00%  uroce            uroce              [.] crc32fast::specialized::pclmulqdq::calculate
    10.00%  uroce-10.66.190  uroce              [.] uroce_proto::qp::rc::Requester::poll_transmit
    10.00%  ksoftirqd/1      [kernel.kallsyms]  [k] __udp4_lib_rcv
    25.00%  rustc            librustc_driver.so [.] rustc_middle::ty::foo
     5.00%  uroce            [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore
";

    #[test]
    fn parses_and_keeps_only_the_benchmark() {
        let s = parse(REPORT);
        assert_eq!(s.len(), 6);
        assert!(s[0].kernel && s[0].symbol == "copy_user_generic_string");
        assert_eq!(s[4].comm, "rustc");
        let (cats, syms) = summarise(&[REPORT], 3);
        // rustc's 25 % is not ours: the shares are of the remaining 75 %.
        let get = |n: &str| cats.iter().find(|c| c.0 == n).map_or(0.0, |c| c.1);
        assert!((get("copies, kernel (user ↔ skb)") - 40.0).abs() < 1e-9);
        assert!((get("ICRC / checksums") - 100.0 * 20.0 / 75.0).abs() < 1e-9);
        assert!((get("uroce engine") - 100.0 * 10.0 / 75.0).abs() < 1e-9);
        assert!((get("kernel UDP/IP receive") - 100.0 * 10.0 / 75.0).abs() < 1e-9);
        assert!((get("locking / wake-ups") - 100.0 * 5.0 / 75.0).abs() < 1e-9);
        assert!((cats.iter().map(|c| c.1).sum::<f64>() - 100.0).abs() < 1e-9);
        assert_eq!(syms.len(), 3);
        assert_eq!(syms[0].0, "copy_user_generic_string [k]");
    }

    #[test]
    fn markdown_lists_categories_and_symbols() {
        let md = markdown("uring", &[REPORT], 10);
        assert!(
            md.contains("| copies, kernel (user ↔ skb) | 40.0 % |"),
            "{md}"
        );
        assert!(md.contains("`crc32fast::specialized::pclmulqdq::calculate`"));
        assert!(!md.contains("rustc"));
    }

    #[test]
    fn merges_reports_by_sample_counts() {
        let client = "    50.00%  300  uroce  uroce  [.] crc32fast::calculate\n    50.00%  300  uroce  [kernel.kallsyms]  [k] udp_sendmsg\n";
        let server = "   100.00%  100  uroce-10.66.1.1  [kernel.kallsyms]  [k] udp_recvmsg\n";
        let (cats, _) = summarise(&[client, server], 5);
        let get = |n: &str| cats.iter().find(|c| c.0 == n).map_or(0.0, |c| c.1);
        assert!(
            (get("kernel UDP/IP receive") - 100.0 / 7.0).abs() < 1e-9,
            "{cats:?}"
        );
        assert!(
            (get("kernel UDP/IP send") - 300.0 / 7.0).abs() < 1e-9,
            "{cats:?}"
        );
    }
}

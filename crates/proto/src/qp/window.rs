//! The send window: how many PSNs the requester keeps unacknowledged.
//!
//! IBTA leaves this to the implementation; rxe caps it at a fixed 128. A fixed cap is a poor
//! fit both ways: on a fast, clean path it limits throughput, and with go-back-N every loss
//! costs a retransmission of the whole window, so on a lossy path a large fixed window
//! multiplies the traffic (measured against the kernel's rxe with 1 % loss: 33× the data).
//! So the window adapts like TCP Reno: it starts at the configured maximum, halves on each loss
//! event (a NAK sequence error, an implicit NAK, a local ACK timeout that resends the window —
//! not an RNR NAK, which says nothing about the path), grows by the PSNs acknowledged while
//! below the threshold set at the last loss, and by about one PSN per window above it. A loss
//! that a timeout's probe found (probe.rs) restarts from the smallest window instead, as TCP
//! does after its retransmission timeout: loss heavy enough that no NAK got through.

/// The smallest window: enough to keep a few MTU-sized packets in flight.
pub(crate) const MIN_WINDOW: u32 = 16;

/// Adaptive window state, in PSNs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// Current window; 0 until first used (then the configured maximum).
    cwnd: u32,
    /// Growth switches from doubling to linear above this.
    ssthresh: u32,
    /// PSNs acknowledged since the window last grew by one in the linear phase.
    acc: u32,
}

impl Window {
    /// The window to enforce, at most `max`.
    pub fn limit(&self, max: u32) -> u32 {
        if self.cwnd == 0 {
            max
        } else {
            self.cwnd.min(max)
        }
    }

    /// A loss event: halve (not below [`MIN_WINDOW`]).
    pub fn on_loss(&mut self, max: u32) {
        let cur = self.limit(max);
        self.cwnd = (cur / 2).max(MIN_WINDOW.min(max));
        self.ssthresh = self.cwnd;
        self.acc = 0;
    }

    /// A loss found after a local ACK timeout: the threshold halves and the window restarts
    /// from the smallest (TCP's loss window after a retransmission timeout, RFC 5681 §3.1).
    pub fn on_timeout_loss(&mut self, max: u32) {
        let cur = self.limit(max);
        self.ssthresh = (cur / 2).max(MIN_WINDOW.min(max));
        self.cwnd = MIN_WINDOW.min(max);
        self.acc = 0;
    }

    /// `n` PSNs were acknowledged.
    pub fn on_acked(&mut self, n: u32, max: u32) {
        if self.cwnd == 0 || n == 0 {
            return;
        }
        if self.cwnd < self.ssthresh.max(MIN_WINDOW) * 2 && self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + n).min(max);
            return;
        }
        self.acc += n;
        while self.acc >= self.cwnd && self.cwnd < max {
            self.acc -= self.cwnd;
            self.cwnd += 1;
        }
        if self.cwnd >= max {
            self.acc = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_loss_and_regrows() {
        let mut w = Window::default();
        assert_eq!(w.limit(2048), 2048, "starts at the maximum");
        w.on_loss(2048);
        assert_eq!(w.limit(2048), 1024);
        for _ in 0..20 {
            w.on_loss(2048);
        }
        assert_eq!(w.limit(2048), MIN_WINDOW);
        // Linear growth above the threshold: about one PSN per window acknowledged.
        let before = w.limit(2048);
        w.on_acked(before, 2048);
        assert_eq!(w.limit(2048), before + 1);
        // Never above the maximum.
        for _ in 0..100_000 {
            w.on_acked(4096, 2048);
        }
        assert_eq!(w.limit(2048), 2048);
    }

    #[test]
    fn a_loss_after_a_timeout_restarts_from_the_smallest_window_with_half_the_threshold() {
        let mut w = Window::default();
        w.on_timeout_loss(2048);
        assert_eq!(w.limit(2048), MIN_WINDOW);
        // Slow start: doubles per window acknowledged up to the threshold (1024)...
        let mut windows = 0;
        while w.limit(2048) < 1024 {
            let cur = w.limit(2048);
            w.on_acked(cur, 2048);
            windows += 1;
        }
        assert_eq!(windows, 6, "16 → 1024 in six doublings");
        assert_eq!(w.limit(2048), 1024);
        // ...then about one PSN per window.
        w.on_acked(1024, 2048);
        assert_eq!(w.limit(2048), 1025);
    }
}

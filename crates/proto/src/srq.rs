//! Shared receive queues: one pool of receive WQEs that several QPs consume from.

use std::collections::VecDeque;

use crate::qp::RecvWqe;
use crate::PdHandle;

/// A shared receive queue.
#[derive(Debug)]
pub struct Srq {
    pub(crate) pd: PdHandle,
    pub(crate) max_wr: u32,
    pub(crate) max_sge: u32,
    pub(crate) queue: VecDeque<RecvWqe>,
}

impl Srq {
    pub(crate) fn new(pd: PdHandle, max_wr: u32, max_sge: u32) -> Self {
        Srq {
            pd,
            max_wr,
            max_sge,
            queue: VecDeque::new(),
        }
    }

    /// Receive WQEs waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

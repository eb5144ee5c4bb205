//! Errors returned to the caller of a verb. Errors of the remote side or the network are never
//! returned here: they become completions with a [`crate::WcStatus`] or counted drops.

/// Why a verb was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is invalid (the text says which).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The object does not exist.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// A configured resource limit was reached.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The queue is full.
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The QP state does not allow this verb.
    #[error("QP in state {0:?} does not allow this")]
    BadState(crate::QpState),
    /// A QP attribute required or forbidden for this transition is wrong.
    #[error("invalid QP attribute: {0}")]
    InvalidAttr(&'static str),
    /// The object is still in use (e.g. a CQ attached to a QP).
    #[error("{0} still in use")]
    Busy(&'static str),
    /// The completion queue overflowed; completions were lost and the CQ is in error.
    #[error("completion queue overrun")]
    CqOverrun,
}

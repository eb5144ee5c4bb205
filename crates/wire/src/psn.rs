//! 24-bit packet sequence numbers (IBTA §9.7.1): arithmetic modulo 2^24 and comparison within
//! half the space, as rxe's `psn_compare`.

use core::cmp::Ordering;
use core::fmt;

/// A packet sequence number, always below 2^24.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Psn(u32);

impl Psn {
    /// The mask of valid bits.
    pub const MASK: u32 = 0xFF_FFFF;

    /// Wraps the low 24 bits of `v`.
    pub const fn new(v: u32) -> Self {
        Psn(v & Self::MASK)
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// `self + n` modulo 2^24.
    pub const fn add(self, n: u32) -> Self {
        Psn::new(self.0.wrapping_add(n))
    }

    /// `self - n` modulo 2^24.
    pub const fn sub(self, n: u32) -> Self {
        Psn::new(self.0.wrapping_sub(n))
    }

    /// Signed distance `self - other`, in −2^23 .. 2^23.
    pub const fn diff(self, other: Psn) -> i32 {
        ((self.0.wrapping_sub(other.0) << 8) as i32) >> 8
    }

    /// Orders two PSNs assuming they are less than 2^23 apart.
    pub fn cmp_window(self, other: Psn) -> Ordering {
        self.diff(other).cmp(&0)
    }
}

impl fmt::Debug for Psn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psn({})", self.0)
    }
}

impl fmt::Display for Psn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_compares_across_zero() {
        let a = Psn::new(0xFF_FFFE);
        let b = a.add(3);
        assert_eq!(b.get(), 1);
        assert_eq!(b.diff(a), 3);
        assert_eq!(a.diff(b), -3);
        assert_eq!(a.cmp_window(b), Ordering::Less);
        assert_eq!(b.sub(3), a);
        assert_eq!(Psn::new(5).diff(Psn::new(5)), 0);
    }
}

//! A small deterministic random generator (xorshift64*): training samples, `braid synth` data
//! and synthetic rPPG clips are the same for the same seed, on every machine.

pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        // Zero is xorshift's one fixed point.
        Random(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[low, high)`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// A number from the standard normal distribution (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (2.0 * std::f64::consts::PI * self.unit()).cos()
    }

    /// An index into a list of `len` items, the first ones more common: weights fall as
    /// 1/(rank + 10), so that from a hundred names the most common is drawn about one time in
    /// thirty and the least about one in three hundred, as with given names and surnames in a
    /// population (a pure Zipf law over so short a list would make the first far too common).
    pub fn popular(&mut self, len: usize) -> usize {
        let weight = |rank: usize| 1.0 / (rank + 10) as f64;
        let total: f64 = (0..len).map(weight).sum();
        let mut point = self.unit() * total;
        for rank in 0..len {
            point -= weight(rank);
            if point <= 0.0 {
                return rank;
            }
        }
        len - 1
    }
}

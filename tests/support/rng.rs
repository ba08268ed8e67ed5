//! A small deterministic generator for the tests' random moments and inputs, so that a failing
//! run can be repeated from the seed it prints.

/// A linear congruential generator; `.0` is its state (the seed, before the first draw).
pub struct Lcg(pub u64);

impl Lcg {
    /// From `WALPOINTS_TEST_SEED`, else the clock; prints which, for `what`.
    pub fn seeded(what: &str) -> Lcg {
        let seed = std::env::var("WALPOINTS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what} from WALPOINTS_TEST_SEED={seed}");
        Lcg(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    /// An index (or a length) in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.index(items.len())]
    }

    /// 1 to `max` pieces drawn from `alphabet`.
    pub fn text(&mut self, alphabet: &[&str], max: usize) -> String {
        let len = 1 + self.index(max);
        (0..len).map(|_| self.pick(alphabet)).collect()
    }

    /// 1 to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.index(max);
        (0..len).map(|_| self.index(256) as u8).collect()
    }
}

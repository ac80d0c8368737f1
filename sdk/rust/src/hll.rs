//! Unique-user sketches PostgreSQL can merge: HyperLogLog as the
//! `postgresql-hll` extension stores it (storage format v1), with its hash
//! (`hll_hash_text`: MurmurHash3 x64 128, seed 0, the first 64 bits). A
//! sketch written here, stored as `'\x…'::hll`, merges with the extension's
//! own by `hll_union_agg` (docs/design/rollups.md).
//!
//! Registers are kept as a sorted map while few are set, so a group with a
//! handful of users costs bytes, not the 16 KiB of the full array.

use std::collections::BTreeMap;

/// Registers as a power of two: 16,384 registers, 1.04/√m ≈ 0.81%
/// standard error (the extension's default, 11, is 2.3%).
pub const LOG2M: u8 = 14;
/// Bits per register.
pub const REGWIDTH: u8 = 5;

const M: usize = 1 << LOG2M;
const MAX_VALUE: u8 = (1 << REGWIDTH) - 1;
/// The full array's length in bytes once written.
const FULL_BYTES: usize = (M * REGWIDTH as usize).div_ceil(8);

/// `hll_hash_text(text)` of the extension, as its 64-bit value.
pub fn hash_text(text: &str) -> u64 {
    murmur3_x64_128(text.as_bytes(), 0).0
}

/// MurmurHash3's x64 128-bit variant; the first half is what the extension keeps.
fn murmur3_x64_128(data: &[u8], seed: u64) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let fmix = |mut k: u64| {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    };
    let (mut h1, mut h2) = (seed, seed);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let k1 = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 = h1.rotate_left(27).wrapping_add(h2).wrapping_mul(5).wrapping_add(0x52dc_e729);
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 = h2.rotate_left(31).wrapping_add(h1).wrapping_mul(5).wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let little = |bytes: &[u8]| bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if tail.len() > 8 {
        h2 ^= little(&tail[8..]).wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= little(&tail[..tail.len().min(8)]).wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The registers: a sorted map while few are set, the full array after.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Registers {
    Sparse(BTreeMap<u16, u8>),
    Full(Box<[u8; M]>),
}

/// A HyperLogLog sketch with [`LOG2M`] and [`REGWIDTH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hll {
    registers: Registers,
    /// Whether anything was added: the extension writes an untouched sketch
    /// as EMPTY, one that saw only the zero hash as an empty SPARSE.
    touched: bool,
}

impl Default for Hll {
    fn default() -> Self {
        Hll { registers: Registers::Sparse(BTreeMap::new()), touched: false }
    }
}

impl Hll {
    /// Adds a user id (or any text), hashed as `hll_hash_text` does.
    pub fn add_text(&mut self, text: &str) {
        self.add_hash(hash_text(text));
    }

    /// Adds a 64-bit hash: the low [`LOG2M`] bits pick a register, the
    /// position of the lowest set bit of the rest is its candidate value.
    pub fn add_hash(&mut self, hash: u64) {
        self.touched = true;
        let index = (hash & (M as u64 - 1)) as u16;
        let rest = hash >> LOG2M;
        if rest == 0 {
            return;
        }
        let value = (rest.trailing_zeros() as u8 + 1).min(MAX_VALUE);
        self.raise(index, value);
    }

    fn raise(&mut self, index: u16, value: u8) {
        match &mut self.registers {
            Registers::Sparse(map) => {
                let slot = map.entry(index).or_insert(0);
                *slot = (*slot).max(value);
                // A map entry costs about 10 bytes with its share of the
                // tree's nodes: past M/16 entries the 16 KiB array is smaller.
                if map.len() > M / 16 {
                    let mut full = Box::new([0u8; M]);
                    for (&i, &v) in map.iter() {
                        full[i as usize] = v;
                    }
                    self.registers = Registers::Full(full);
                }
            }
            Registers::Full(full) => full[index as usize] = full[index as usize].max(value),
        }
    }

    /// Folds `other` in: the sketch of the union of both sets.
    pub fn merge(&mut self, other: &Hll) {
        self.touched |= other.touched;
        for (index, value) in other.set_registers() {
            self.raise(index, value);
        }
    }

    /// The non-zero registers, by index.
    fn set_registers(&self) -> Vec<(u16, u8)> {
        match &self.registers {
            Registers::Sparse(map) => map.iter().filter(|(_, &v)| v > 0).map(|(&i, &v)| (i, v)).collect(),
            Registers::Full(full) => full.iter().enumerate().filter(|(_, &v)| v > 0).map(|(i, &v)| (i as u16, v)).collect(),
        }
    }

    /// The estimated number of distinct values, as `hll_cardinality` computes it.
    pub fn cardinality(&self) -> f64 {
        let m = M as f64;
        let set = self.set_registers();
        let zeros = (M - set.len()) as f64;
        let sum = zeros + set.iter().map(|&(_, v)| (-f64::from(v)).exp2()).sum::<f64>();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let estimate = alpha * m * m / sum;
        let two_to_l = (f64::from(MAX_VALUE) - 1.0 + f64::from(LOG2M)).exp2();
        if zeros > 0.0 && estimate < 5.0 * m / 2.0 {
            m * (m / zeros).ln()
        } else if estimate <= two_to_l / 30.0 {
            estimate
        } else {
            -two_to_l * (1.0 - estimate / two_to_l).ln()
        }
    }

    /// The sketch in the extension's storage format: SPARSE while that is
    /// shorter, else FULL; explicit lists off, sparse on (`hll_empty(14, 5,
    /// 0, 1)`). Text input of the `hll` type is these bytes as `\x` and hex.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Version 1; parameters; sparse on (bit 6), explicit threshold 0.
        let header = |kind: u8| vec![0x10 | kind, ((REGWIDTH - 1) << 5) | LOG2M, 0x40];
        if !self.touched {
            return header(1);
        }
        let set = self.set_registers();
        let entry_bits = usize::from(LOG2M + REGWIDTH);
        if (set.len() * entry_bits).div_ceil(8) < FULL_BYTES {
            let mut bytes = header(3);
            let mut bits = BitWriter::default();
            for (index, value) in set {
                bits.push((u64::from(index) << REGWIDTH) | u64::from(value), entry_bits);
            }
            bytes.extend(bits.finish());
            return bytes;
        }
        let mut full = [0u8; M];
        for (index, value) in set {
            full[index as usize] = value;
        }
        let mut bytes = header(4);
        let mut bits = BitWriter::default();
        for value in full {
            bits.push(u64::from(value), usize::from(REGWIDTH));
        }
        bytes.extend(bits.finish());
        bytes
    }
}

/// Packs values most significant bit first, as the storage format does.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    used: usize,
}

impl BitWriter {
    fn push(&mut self, value: u64, width: usize) {
        for bit in (0..width).rev() {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if value >> bit & 1 == 1 {
                *self.bytes.last_mut().expect("pushed above") |= 0x80 >> (self.used % 8);
            }
            self.used += 1;
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reference values from PostgreSQL 15 with `postgresql-hll` 2.16, e.g.
/// `select hll_hash_text('a')` and `select hll_add_agg(hll_hash_text('user-'
/// || x), 14, 5, 0, 1)::text from generate_series(1, 3) x`.
#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn users(n: u32) -> Hll {
        let mut hll = Hll::default();
        (1..=n).for_each(|x| hll.add_text(&format!("user-{x}")));
        hll
    }

    #[test]
    fn text_hashes_as_hll_hash_text_does() {
        let cases = [
            ("", 0),
            ("a", -8_839_064_797_231_613_815),
            ("user-1", 7_038_226_039_998_199_158),
            ("é", -3_956_277_427_552_623_640),
            (&"x".repeat(100), 289_608_075_098_811_106),
        ];
        for (text, expected) in cases {
            assert_eq!(hash_text(text) as i64, expected, "{text:?}");
        }
    }

    #[test]
    fn a_few_users_are_written_as_the_extensions_sparse_sketch() {
        assert_eq!(hex(&Hll::default().to_bytes()), "118e40");
        let mut zero_only = Hll::default();
        zero_only.add_text("");
        assert_eq!(hex(&zero_only.to_bytes()), "138e40");
        assert_eq!(hex(&users(3).to_bytes()), "138e406f84791787576180");
        assert!((users(3).cardinality() - 3.000_274_691_735_112).abs() < 1e-9);
        assert!(hex(&users(100).to_bytes()).starts_with("138e40021c40b18c2c1105ac10c7c4257084f208a54317c42357847c9091822238c24e790a1809"));
        assert!((users(100).cardinality() - 99.300_313_151_905_27).abs() < 1e-9);
    }

    #[test]
    fn many_users_are_written_as_the_extensions_full_sketch_with_its_estimate() {
        use sha2::Digest;
        let hll = users(100_000);
        let bytes = hll.to_bytes();
        assert_eq!(bytes.len(), 3 + FULL_BYTES);
        assert_eq!(hex(&sha2::Sha256::digest(&bytes)), "6808621064359b18315d9a241e48b72fa095838ed45f872e1f39fdc05a90cae0");
        assert!((hll.cardinality() - 100_076.636_647_147_45).abs() < 1e-6);
        let thousand = users(1000);
        assert_eq!(thousand.to_bytes().len() * 2, 4584 - 2);
        assert_eq!(hex(&sha2::Sha256::digest(thousand.to_bytes())), "14a5e02bb4ec95fda674ada74d6cffb788c8d42e1b3ffdac88b0d811c62f3fb9");
    }

    #[test]
    fn merged_sketches_equal_the_sketch_of_the_union() {
        let mut merged = Hll::default();
        for hour in 0..24u32 {
            let mut part = Hll::default();
            (1..=100_000u32).filter(|x| x % 24 == hour).for_each(|x| part.add_text(&format!("user-{x}")));
            merged.merge(&part);
        }
        assert_eq!(merged.to_bytes(), users(100_000).to_bytes());
        // The bound: a day merged from 24 hourly sketches within 2% of the exact count.
        let error = (merged.cardinality() - 100_000.0).abs() / 100_000.0;
        assert!(error < 0.02, "{:.2}% off", error * 100.0);
    }

    #[test]
    fn a_million_users_cost_one_array_and_are_estimated_as_the_extension_does() {
        let hll = users(1_000_000);
        assert!(matches!(hll.registers, Registers::Full(_)), "a million users are past the sorted map");
        assert_eq!(hll.to_bytes().len(), 3 + FULL_BYTES);
        // PostgreSQL's own estimate of the same set: 2.47% over, the worst of
        // four key sets measured at this size (docs/design/rollups.md).
        assert!((hll.cardinality() - 1_024_733.922_208_241_3).abs() < 1e-6, "{}", hll.cardinality());
    }
}

//! Two-ended offset allocator for one shared-memory area `[start, end)`: records grow up
//! from the low end, buffers grow down from the high end, and the two regions never cross.
//! It is pure arithmetic and never touches memory. Freed blocks become coalesced holes reused
//! first-fit by the same end; a hole touching its watermark is folded back into the middle gap.

use std::collections::BTreeMap;
use std::fmt;

/// Which end of the area a block is allocated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Grows upward from `start` (records).
    Low,
    /// Grows downward from `end` (buffers).
    High,
}

/// A live allocation: `len` is the size after rounding up to the requested alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// First byte of the block, aligned as requested.
    pub offset: u64,
    /// Bytes it spans.
    pub len: u64,
    /// The end it was allocated from.
    pub end: End,
}

/// A call the allocator refuses (running out of space is `Ok(None)`, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// `free` was given an offset that is not the start of a live block.
    NotAllocated {
        /// The offset given.
        offset: u64,
    },
    /// Size zero or an alignment that is not a power of two.
    BadRequest {
        /// The size asked for.
        size: u64,
        /// The alignment asked for.
        align: u64,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::NotAllocated { offset } => {
                write!(f, "no live block starts at offset {offset}")
            }
            AllocError::BadRequest { size, align } => write!(
                f,
                "bad allocation request: size {size}, align {align} (size must be > 0, align a power of two)"
            ),
        }
    }
}

impl std::error::Error for AllocError {}

/// A snapshot of the allocator's bookkeeping, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocStats {
    /// First byte of the area.
    pub start: u64,
    /// End of the area, exclusive.
    pub end: u64,
    /// First byte above the low region.
    pub low_mark: u64,
    /// First byte of the high region.
    pub high_mark: u64,
    /// Bytes in live low blocks.
    pub low_used: u64,
    /// Bytes in live high blocks.
    pub high_used: u64,
    /// `end - start - low_used - high_used`.
    pub free_bytes: u64,
    /// Every free range as `(offset, len)`, sorted and coalesced, including the middle gap.
    pub holes: Vec<(u64, u64)>,
    /// Live blocks at the low end.
    pub low_blocks: usize,
    /// Live blocks at the high end.
    pub high_blocks: usize,
}

/// Holes of one region, keyed by offset, value is length.
///
/// Invariants: holes are non-empty, disjoint and never adjacent (always coalesced), and
/// no hole touches its region's watermark (such a hole is folded into the middle gap).
type Holes = BTreeMap<u64, u64>;

/// The allocator of one area `[start, end)`: offsets only, it never touches memory.
#[derive(Debug, Clone)]
pub struct TwoEndedAllocator {
    start: u64,
    end: u64,
    low_mark: u64,
    high_mark: u64,
    /// Live blocks of both ends, keyed by offset.
    blocks: BTreeMap<u64, Block>,
    low_holes: Holes,
    high_holes: Holes,
    low_used: u64,
    high_used: u64,
    low_count: usize,
    high_count: usize,
}

impl TwoEndedAllocator {
    /// An empty allocator over `[start, end)`.
    ///
    /// # Panics
    /// If `start > end`.
    pub fn new(start: u64, end: u64) -> Self {
        assert!(start <= end, "allocator area start {start} > end {end}");
        TwoEndedAllocator {
            start,
            end,
            low_mark: start,
            high_mark: end,
            blocks: BTreeMap::new(),
            low_holes: Holes::new(),
            high_holes: Holes::new(),
            low_used: 0,
            high_used: 0,
            low_count: 0,
            high_count: 0,
        }
    }

    /// Allocates `size` bytes (rounded up to a multiple of `align`) at `end`, returning the
    /// aligned offset, or `Ok(None)` if no free range at that end can hold it.
    pub fn alloc(&mut self, end: End, size: u64, align: u64) -> Result<Option<u64>, AllocError> {
        if size == 0 || !align.is_power_of_two() {
            return Err(AllocError::BadRequest { size, align });
        }
        // A size that cannot even be rounded is larger than any area, so it simply does not fit.
        let Some(size) = size.checked_next_multiple_of(align) else {
            return Ok(None);
        };
        let offset = match end {
            End::Low => self.place_low(size, align),
            End::High => self.place_high(size, align),
        };
        if let Some(offset) = offset {
            self.record(Block { offset, len: size, end });
        }
        Ok(offset)
    }

    /// Like [`alloc`](Self::alloc) at the low end; bad requests yield `None`.
    pub fn alloc_low(&mut self, size: u64, align: u64) -> Option<u64> {
        self.alloc(End::Low, size, align).ok().flatten()
    }

    /// Like [`alloc`](Self::alloc) at the high end; bad requests yield `None`.
    pub fn alloc_high(&mut self, size: u64, align: u64) -> Option<u64> {
        self.alloc(End::High, size, align).ok().flatten()
    }

    /// Frees the live block starting exactly at `offset` and returns it.
    pub fn free(&mut self, offset: u64) -> Result<Block, AllocError> {
        let block = self.blocks.remove(&offset).ok_or(AllocError::NotAllocated { offset })?;
        match block.end {
            End::Low => {
                self.low_used -= block.len;
                self.low_count -= 1;
                let (start, limit) = insert_hole(&mut self.low_holes, block.offset, block.len);
                if limit == self.low_mark {
                    self.low_holes.remove(&start);
                    self.low_mark = start;
                }
            }
            End::High => {
                self.high_used -= block.len;
                self.high_count -= 1;
                let (start, limit) = insert_hole(&mut self.high_holes, block.offset, block.len);
                if start == self.high_mark {
                    self.high_holes.remove(&start);
                    self.high_mark = limit;
                }
            }
        }
        Ok(block)
    }

    /// The live block starting exactly at `offset`, if any.
    pub fn block(&self, offset: u64) -> Option<Block> {
        self.blocks.get(&offset).copied()
    }

    /// All live blocks, sorted by offset.
    pub fn live_blocks(&self) -> Vec<Block> {
        self.blocks.values().copied().collect()
    }

    /// The current bookkeeping, watermarks and holes included.
    pub fn stats(&self) -> AllocStats {
        AllocStats {
            start: self.start,
            end: self.end,
            low_mark: self.low_mark,
            high_mark: self.high_mark,
            low_used: self.low_used,
            high_used: self.high_used,
            free_bytes: self.end - self.start - self.low_used - self.high_used,
            holes: self.free_ranges(),
            low_blocks: self.low_count,
            high_blocks: self.high_count,
        }
    }

    /// True when no block is live.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The largest size an align-1 allocation at `end` could get right now.
    pub fn largest_free(&self, end: End) -> u64 {
        let holes = match end {
            End::Low => &self.low_holes,
            End::High => &self.high_holes,
        };
        let gap = self.high_mark - self.low_mark;
        holes.values().copied().fold(gap, u64::max)
    }

    /// First fit from the bottom: the lowest low hole that fits, else the bottom of the gap.
    fn place_low(&mut self, size: u64, align: u64) -> Option<u64> {
        let fit = self.low_holes.iter().find_map(|(&start, &len)| {
            let offset = align_up(start, align)?;
            let limit = offset.checked_add(size)?;
            (limit <= start + len).then_some((start, offset))
        });
        if let Some((hole, offset)) = fit {
            carve(&mut self.low_holes, hole, offset, size);
            return Some(offset);
        }
        let offset = align_up(self.low_mark, align)?;
        let limit = offset.checked_add(size)?;
        if limit > self.high_mark {
            return None;
        }
        // Alignment padding below the block stays reusable by later low requests.
        if offset > self.low_mark {
            self.low_holes.insert(self.low_mark, offset - self.low_mark);
        }
        self.low_mark = limit;
        Some(offset)
    }

    /// First fit from the top: the highest high hole that fits, else the top of the gap.
    fn place_high(&mut self, size: u64, align: u64) -> Option<u64> {
        let fit = self.high_holes.iter().rev().find_map(|(&start, &len)| {
            let offset = align_down((start + len).checked_sub(size)?, align);
            (offset >= start).then_some((start, offset))
        });
        if let Some((hole, offset)) = fit {
            carve(&mut self.high_holes, hole, offset, size);
            return Some(offset);
        }
        let offset = align_down(self.high_mark.checked_sub(size)?, align);
        if offset < self.low_mark {
            return None;
        }
        // Alignment padding above the block stays reusable by later high requests.
        let limit = offset + size;
        if limit < self.high_mark {
            self.high_holes.insert(limit, self.high_mark - limit);
        }
        self.high_mark = offset;
        Some(offset)
    }

    fn record(&mut self, block: Block) {
        match block.end {
            End::Low => {
                self.low_used += block.len;
                self.low_count += 1;
            }
            End::High => {
                self.high_used += block.len;
                self.high_count += 1;
            }
        }
        self.blocks.insert(block.offset, block);
    }

    /// Low holes, the middle gap and high holes as one sorted, coalesced list.
    fn free_ranges(&self) -> Vec<(u64, u64)> {
        let gap = (self.low_mark, self.high_mark - self.low_mark);
        let ranges = self
            .low_holes
            .iter()
            .map(|(&o, &l)| (o, l))
            .chain(std::iter::once(gap))
            .chain(self.high_holes.iter().map(|(&o, &l)| (o, l)));
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (offset, len) in ranges.filter(|&(_, len)| len > 0) {
            match merged.last_mut() {
                Some((prev, prev_len)) if *prev + *prev_len == offset => *prev_len += len,
                _ => merged.push((offset, len)),
            }
        }
        merged
    }
}

/// Removes `size` bytes at `offset` from the hole starting at `hole`, keeping the fragments
/// on either side (alignment padding, leftover tail) as holes.
fn carve(holes: &mut Holes, hole: u64, offset: u64, size: u64) {
    // Invariant: the caller found `hole` in `holes` just now.
    let len = holes.remove(&hole).expect("carved hole exists");
    if offset > hole {
        holes.insert(hole, offset - hole);
    }
    let limit = offset + size;
    let hole_limit = hole + len;
    if limit < hole_limit {
        holes.insert(limit, hole_limit - limit);
    }
}

/// Inserts the free range `[offset, offset+len)` and merges it with adjacent holes; returns
/// the merged hole as `(start, limit)`.
fn insert_hole(holes: &mut Holes, offset: u64, len: u64) -> (u64, u64) {
    let mut start = offset;
    let mut limit = offset + len;
    let below = holes.range(..start).next_back().map(|(&o, &l)| (o, l));
    if let Some((o, l)) = below.filter(|&(o, l)| o + l == start) {
        holes.remove(&o);
        start = o;
        debug_assert_eq!(o + l, offset);
    }
    if let Some(l) = holes.remove(&limit) {
        limit += l;
    }
    holes.insert(start, limit - start);
    (start, limit)
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const PAGE: u64 = 4096;

    /// One past the block's last byte.
    fn limit(b: &Block) -> u64 {
        b.offset + b.len
    }

    fn area() -> TwoEndedAllocator {
        TwoEndedAllocator::new(PAGE, PAGE + MIB)
    }

    /// Checks every structural invariant the allocator promises; panics with context on failure.
    fn check_invariants(a: &TwoEndedAllocator) {
        let s = a.stats();
        let blocks = a.live_blocks();
        assert!(s.start <= s.low_mark && s.low_mark <= s.high_mark && s.high_mark <= s.end);
        for pair in blocks.windows(2) {
            assert!(limit(&pair[0]) <= pair[1].offset, "overlap: {pair:?}");
        }
        for b in &blocks {
            assert!(b.len > 0 && b.offset >= s.start && limit(b) <= s.end, "{b:?}");
            match b.end {
                End::Low => assert!(limit(b) <= s.low_mark, "low block {b:?} above {s:?}"),
                End::High => assert!(b.offset >= s.high_mark, "high block {b:?} below {s:?}"),
            }
        }
        let max_low = blocks.iter().filter(|b| b.end == End::Low).map(limit).max();
        let min_high = blocks.iter().filter(|b| b.end == End::High).map(|b| b.offset).min();
        if let (Some(lo), Some(hi)) = (max_low, min_high) {
            assert!(lo <= hi, "ends crossed: low up to {lo}, high from {hi}");
        }
        assert_eq!(s.free_bytes + s.low_used + s.high_used, s.end - s.start);
        let used = |e: End| blocks.iter().filter(|b| b.end == e).map(|b| b.len).sum::<u64>();
        assert_eq!(s.low_used, used(End::Low));
        assert_eq!(s.high_used, used(End::High));
        let count = |e: End| blocks.iter().filter(|b| b.end == e).count();
        assert_eq!((s.low_blocks, s.high_blocks), (count(End::Low), count(End::High)));
        assert_eq!(s.holes.iter().map(|h| h.1).sum::<u64>(), s.free_bytes);
        for pair in s.holes.windows(2) {
            assert!(pair[0].0 + pair[0].1 < pair[1].0, "holes not coalesced: {pair:?}");
        }
        for &(o, l) in &s.holes {
            assert!(l > 0);
            for b in &blocks {
                assert!(o + l <= b.offset || limit(b) <= o, "hole ({o},{l}) overlaps {b:?}");
            }
        }
    }

    fn free_all(a: &mut TwoEndedAllocator) {
        for b in a.live_blocks() {
            a.free(b.offset).unwrap();
        }
    }

    #[test]
    fn records_grow_up_and_buffers_grow_down() {
        let mut a = area();
        assert_eq!(a.alloc_low(100, 1), Some(PAGE));
        assert_eq!(a.alloc_low(100, 1), Some(PAGE + 100));
        assert_eq!(a.alloc_high(PAGE, PAGE), Some(MIB));
        assert_eq!(a.alloc_high(PAGE, PAGE), Some(MIB - PAGE));
        let s = a.stats();
        assert_eq!((s.low_mark, s.high_mark), (PAGE + 200, MIB - PAGE));
        assert_eq!((s.low_blocks, s.high_blocks), (2, 2));
        check_invariants(&a);
    }

    #[test]
    fn allocating_past_the_meeting_point_fails() {
        let mut a = TwoEndedAllocator::new(0, 10 * PAGE);
        assert!(a.alloc_high(6 * PAGE, PAGE).is_some());
        assert!(a.alloc_low(3 * PAGE, 1).is_some());
        assert_eq!(a.alloc_low(PAGE + 1, 1), None);
        assert_eq!(a.alloc(End::High, PAGE + 1, 1), Ok(None));
        assert_eq!(a.largest_free(End::Low), PAGE);
        assert_eq!(a.alloc_high(PAGE, PAGE), Some(3 * PAGE));
        assert_eq!(a.alloc_low(1, 1), None);
        assert_eq!(a.stats().free_bytes, 0);
        check_invariants(&a);
    }

    #[test]
    fn freed_hole_is_reused_by_the_same_end() {
        let mut a = area();
        let r1 = a.alloc_low(64, 1).unwrap();
        let r2 = a.alloc_low(64, 1).unwrap();
        let _r3 = a.alloc_low(64, 1).unwrap();
        a.free(r2).unwrap();
        assert_eq!(a.alloc_low(32, 1), Some(r2), "first fit takes the lowest hole");
        assert_eq!(a.alloc_low(32, 1), Some(r2 + 32));
        assert!(r1 < r2);

        let b1 = a.alloc_high(PAGE, PAGE).unwrap();
        let b2 = a.alloc_high(PAGE, PAGE).unwrap();
        let _b3 = a.alloc_high(PAGE, PAGE).unwrap();
        a.free(b2).unwrap();
        assert_eq!(a.alloc_high(PAGE, PAGE), Some(b2));
        assert!(b1 > b2);
        check_invariants(&a);
    }

    #[test]
    fn holes_are_not_shared_between_ends() {
        let mut a = TwoEndedAllocator::new(0, 4 * PAGE);
        let r1 = a.alloc_low(PAGE, 1).unwrap();
        let _r2 = a.alloc_low(PAGE, 1).unwrap();
        let _b1 = a.alloc_high(2 * PAGE, PAGE).unwrap();
        a.free(r1).unwrap();
        assert_eq!(a.largest_free(End::High), 0);
        assert_eq!(a.alloc_high(PAGE, 1), None, "a low hole is not usable by buffers");
        assert_eq!(a.largest_free(End::Low), PAGE);
    }

    #[test]
    fn neighbouring_holes_coalesce() {
        let mut a = area();
        let r: Vec<u64> = (0..4).map(|_| a.alloc_low(100, 1).unwrap()).collect();
        a.free(r[0]).unwrap();
        a.free(r[2]).unwrap();
        a.free(r[1]).unwrap();
        let s = a.stats();
        assert_eq!(s.holes[0], (r[0], 300));
        assert_eq!(a.alloc_low(300, 1), Some(r[0]));

        let b: Vec<u64> = (0..4).map(|_| a.alloc_high(PAGE, PAGE).unwrap()).collect();
        a.free(b[1]).unwrap();
        a.free(b[2]).unwrap();
        assert!(a.stats().holes.contains(&(b[2], 2 * PAGE)));
        check_invariants(&a);
    }

    #[test]
    fn freeing_next_to_the_watermark_moves_it_back() {
        let mut a = area();
        let r1 = a.alloc_low(100, 1).unwrap();
        let r2 = a.alloc_low(100, 1).unwrap();
        let r3 = a.alloc_low(100, 1).unwrap();
        a.free(r2).unwrap();
        a.free(r3).unwrap();
        assert_eq!(a.stats().low_mark, r2, "watermark absorbs the adjacent hole");
        a.free(r1).unwrap();
        assert_eq!(a.stats().low_mark, PAGE);

        let b1 = a.alloc_high(PAGE, PAGE).unwrap();
        let b2 = a.alloc_high(PAGE, PAGE).unwrap();
        a.free(b2).unwrap();
        assert_eq!(a.stats().high_mark, b1);
    }

    #[test]
    fn freeing_everything_restores_one_hole() {
        let mut a = area();
        for i in 1..50 {
            a.alloc_low(i * 7, 8).unwrap();
            a.alloc_high(i * 300, PAGE).unwrap();
        }
        free_all(&mut a);
        assert!(a.is_empty());
        let s = a.stats();
        assert_eq!(s.holes, vec![(PAGE, MIB)]);
        assert_eq!((s.low_mark, s.high_mark), (PAGE, PAGE + MIB));
        assert_eq!(a.largest_free(End::Low), MIB);
    }

    #[test]
    fn freeing_an_unknown_offset_is_an_error() {
        let mut a = area();
        let r = a.alloc_low(100, 1).unwrap();
        assert_eq!(a.free(r + 1), Err(AllocError::NotAllocated { offset: r + 1 }));
        assert_eq!(a.free(0), Err(AllocError::NotAllocated { offset: 0 }));
        let freed = a.free(r).unwrap();
        assert_eq!(freed, Block { offset: r, len: 100, end: End::Low });
        assert_eq!(a.free(r), Err(AllocError::NotAllocated { offset: r }));
        assert!(a.free(r).unwrap_err().to_string().contains("offset"));
    }

    #[test]
    fn bad_requests_are_rejected() {
        let mut a = area();
        assert_eq!(a.alloc(End::Low, 0, 1), Err(AllocError::BadRequest { size: 0, align: 1 }));
        assert_eq!(a.alloc(End::High, 8, 3), Err(AllocError::BadRequest { size: 8, align: 3 }));
        assert_eq!(a.alloc(End::High, 8, 0), Err(AllocError::BadRequest { size: 8, align: 0 }));
        assert_eq!(a.alloc_low(0, 1), None);
        assert_eq!(a.alloc_high(8, 12), None);
        assert!(a.is_empty());
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let mut a = TwoEndedAllocator::new(u64::MAX - 2 * PAGE, u64::MAX);
        for end in [End::Low, End::High] {
            assert_eq!(a.alloc(end, u64::MAX, 1), Ok(None));
            assert_eq!(a.alloc(end, u64::MAX, PAGE), Ok(None));
            assert_eq!(a.alloc(end, u64::MAX - 1, 1 << 63), Ok(None));
            assert_eq!(a.alloc(end, 1, 1 << 63), Ok(None));
        }
        let r = a.alloc_low(10, 1).unwrap();
        a.free(r).unwrap();
        assert_eq!(a.alloc_high(PAGE, PAGE), Some(u64::MAX - PAGE - (PAGE - 1)));
        check_invariants(&a);
    }

    #[test]
    fn alignment_is_respected() {
        let mut a = TwoEndedAllocator::new(100, 100 + MIB);
        let r1 = a.alloc_low(10, 64).unwrap();
        assert_eq!(r1 % 64, 0);
        assert_eq!(a.block(r1).unwrap().len, 64, "size is rounded up to the alignment");
        let b1 = a.alloc_high(100, PAGE).unwrap();
        assert_eq!(b1 % PAGE, 0);
        assert_eq!(a.block(b1).unwrap().len, PAGE);
        // The low padding [100, 128) is a hole that a small unaligned record can still use.
        assert_eq!(a.alloc_low(28, 1), Some(100));
        check_invariants(&a);
        free_all(&mut a);
        assert_eq!(a.stats().holes, vec![(100, MIB)]);
    }

    #[test]
    fn empty_area_fits_nothing() {
        let mut a = TwoEndedAllocator::new(PAGE, PAGE);
        assert_eq!(a.alloc_low(1, 1), None);
        assert_eq!(a.alloc_high(1, 1), None);
        assert!(a.stats().holes.is_empty());
        assert_eq!(a.largest_free(End::High), 0);
    }

    #[test]
    #[should_panic]
    fn inverted_area_panics() {
        let _ = TwoEndedAllocator::new(2, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc {
            end: End,
            size: u64,
            align: u64,
        },
        /// Frees the live block at this index (modulo the live count).
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let end = prop_oneof![Just(End::Low), Just(End::High)];
        let align = prop_oneof![Just(1u64), Just(64), Just(PAGE)];
        prop_oneof![
            3 => (end, 1..=64 * KIB, align).prop_map(|(end, size, align)| Op::Alloc { end, size, align }),
            2 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_ops_keep_the_regions_apart(ops in prop::collection::vec(op(), 1..200)) {
            let mut a = area();
            for op in ops {
                match op {
                    Op::Alloc { end, size, align } => {
                        if let Some(offset) = a.alloc(end, size, align).unwrap() {
                            let b = a.block(offset).unwrap();
                            prop_assert_eq!(offset % align, 0);
                            prop_assert!(b.len >= size && b.len.is_multiple_of(align) && b.end == end);
                        } else if align == 1 {
                            // Failure must be honest: no free range at that end was big enough.
                            prop_assert!(a.largest_free(end) < size);
                        }
                    }
                    Op::Free(i) => {
                        let live = a.live_blocks();
                        if !live.is_empty() {
                            let b = live[i % live.len()];
                            prop_assert_eq!(a.free(b.offset).unwrap(), b);
                            prop_assert!(a.block(b.offset).is_none());
                        }
                    }
                }
                check_invariants(&a);
            }
            free_all(&mut a);
            prop_assert_eq!(a.stats().holes, vec![(PAGE, MIB)]);
        }

        #[test]
        fn a_freed_block_fits_again_at_the_same_end(
            ops in prop::collection::vec(op(), 1..150),
            pick in any::<usize>(),
        ) {
            let mut a = area();
            let mut aligns = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc { end, size, align } => {
                        if let Some(offset) = a.alloc(end, size, align).unwrap() {
                            aligns.insert(offset, align);
                        }
                    }
                    Op::Free(i) => {
                        let live = a.live_blocks();
                        if !live.is_empty() {
                            a.free(live[i % live.len()].offset).unwrap();
                        }
                    }
                }
            }
            let live = a.live_blocks();
            if !live.is_empty() {
                let b = live[pick % live.len()];
                a.free(b.offset).unwrap();
                let again = a.alloc(b.end, b.len, aligns[&b.offset]).unwrap();
                prop_assert!(again.is_some(), "freed {:?} but could not reallocate it", b);
                prop_assert_eq!(a.block(again.unwrap()).unwrap().len, b.len);
                check_invariants(&a);
            }
        }
    }
}

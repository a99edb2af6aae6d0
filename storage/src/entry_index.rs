//! One group's index from entry index to where the entry's record is.
//!
//! A group's live entries are always consecutive: an append must continue the group's log, a
//! truncation cuts a suffix and a purge a prefix. So the index is a deque addressed by
//! `index - first`, as raft-engine's memtable is, rather than an ordered map: appending is a push
//! instead of a tree insert (which, with a node allocation every few entries, was a tenth of the
//! CPU of an append in a profile), and a range is a slice of the deque.

use std::collections::VecDeque;
use std::ops::Bound;

/// Consecutive entries `first ..= first + len - 1` and their values.
#[derive(Clone, Debug)]
pub struct EntryIndex<T> {
    first: u64,
    values: VecDeque<T>,
}

impl<T> Default for EntryIndex<T> {
    fn default() -> Self {
        EntryIndex {
            first: 0,
            values: VecDeque::new(),
        }
    }
}

impl<T> EntryIndex<T> {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The first entry's index.
    pub fn first(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.first)
    }

    /// The last entry's index.
    pub fn last(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.first + self.values.len() as u64 - 1)
    }

    /// Adds entry `index`, which must follow the last one (any index may start an empty index).
    pub fn push(&mut self, index: u64, value: T) {
        match self.last() {
            Some(last) => assert_eq!(
                Some(index),
                last.checked_add(1),
                "entry {index} does not follow entry {last}: a group's entries are consecutive"
            ),
            None => self.first = index,
        }
        self.values.push_back(value);
    }

    /// Removes the entries at `first_removed` and after; returns their values.
    pub fn split_off(&mut self, first_removed: u64) -> VecDeque<T> {
        let kept = first_removed
            .saturating_sub(self.first)
            .min(self.values.len() as u64);
        self.values.split_off(kept as usize)
    }

    /// Removes the entries at `index` and before; returns their values.
    pub fn remove_through(&mut self, index: u64) -> VecDeque<T> {
        let removed = index
            .checked_sub(self.first)
            .map_or(0, |before| (before + 1).min(self.values.len() as u64));
        let kept = self.values.split_off(removed as usize);
        self.first += removed;
        std::mem::replace(&mut self.values, kept)
    }

    /// The entries in `range`, in order, with their indexes.
    pub fn range(&self, range: (Bound<u64>, Bound<u64>)) -> impl Iterator<Item = (u64, &T)> {
        let len = self.values.len() as u64;
        let position = |index: u64| index.saturating_sub(self.first).min(len);
        let start = match range.0 {
            Bound::Included(index) => position(index),
            Bound::Excluded(index) => position(index.saturating_add(1)),
            Bound::Unbounded => 0,
        };
        let end = match range.1 {
            Bound::Included(index) => position(index.saturating_add(1)),
            Bound::Excluded(index) => position(index),
            Bound::Unbounded => len,
        };
        let end = end.max(start);
        (start..end).map(move |offset| (self.first + offset, &self.values[offset as usize]))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::RangeBounds;

    use super::*;

    fn collect(index: &EntryIndex<u64>, range: (Bound<u64>, Bound<u64>)) -> Vec<u64> {
        index
            .range(range)
            .map(|(i, &v)| {
                assert_eq!(i, v, "the value stored with entry {i}");
                i
            })
            .collect()
    }

    /// Every operation agrees with an ordered map holding the same entries.
    #[test]
    fn behaves_as_an_ordered_map_of_consecutive_entries() {
        let mut index = EntryIndex::default();
        let mut map = BTreeMap::new();
        for i in 5..=40u64 {
            index.push(i, i);
            map.insert(i, i);
        }
        assert_eq!(index.split_off(31).len(), map.split_off(&31).len());
        let kept = map.split_off(&11);
        assert_eq!(index.remove_through(10).len(), map.len());
        map = kept;
        assert_eq!(index.last(), map.keys().next_back().copied());
        let bounds = |i: u64| [Bound::Included(i), Bound::Excluded(i), Bound::Unbounded];
        for start in 0..45 {
            for end in start..45 {
                for range in bounds(start)
                    .into_iter()
                    .flat_map(|s| bounds(end).map(move |e| (s, e)))
                {
                    let expected: Vec<u64> = map.keys().copied().filter(|i| range.contains(i)).collect();
                    assert_eq!(collect(&index, range), expected, "{range:?}");
                }
            }
        }
        assert!(
            index.remove_through(3).is_empty(),
            "nothing before the first entry"
        );
        assert!(index.split_off(100).is_empty(), "nothing after the last entry");
        assert_eq!(index.remove_through(100).len(), 20);
        assert!(index.is_empty());
        index.push(200, 200);
        assert_eq!(index.last(), Some(200), "an emptied index may start anywhere");
    }

    #[test]
    #[should_panic(expected = "does not follow")]
    fn a_gap_is_refused() {
        let mut index = EntryIndex::default();
        index.push(1, ());
        index.push(3, ());
    }
}

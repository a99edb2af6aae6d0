//! The bounded backlog: incidents read from the trail and not yet acknowledged by the receiver, in trail
//! order, and what was skipped when there were too many.
//!
//! Pure: no I/O, no clock. The trail on disk is the spool — every incident stays there, signed — and the
//! backlog is the window of it the sink still owes the receiver, at most `bound` incidents. When one more
//! arrives with the window full, the oldest is dropped into the *gap*: one notice naming the first and
//! last skipped sequence and how many incidents it covers, delivered before everything after it, so the
//! receiver learns exactly which range to fetch with `domicile audit export --from`. Skipped incidents
//! are still in the trail; only their push is given up.

use std::collections::VecDeque;

use audit::{Entry, Hash};

use super::cursor::Cursor;

/// An incident as read from the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incident {
    pub entry: Entry,
    pub hash: Hash,
}

/// Incidents skipped because the backlog was full: trail sequences `first..=last`, of which `incidents`
/// were incidents (the others were entries that are not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
    pub incidents: u64,
}

/// What to send next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    Gap(&'a Gap),
    Incident(&'a Incident),
}

#[derive(Debug)]
pub struct Backlog {
    bound: usize,
    gap: Option<Gap>,
    incidents: VecDeque<Incident>,
    /// Everything before this was read from the trail (incidents queued, other entries passed over).
    read_to: Cursor,
}

impl Backlog {
    /// An empty backlog whose reading starts at `cursor`.
    pub fn new(bound: usize, cursor: Cursor) -> Backlog {
        assert!(bound > 0, "a backlog holds at least one incident");
        Backlog {
            bound,
            gap: None,
            incidents: VecDeque::new(),
            read_to: cursor,
        }
    }

    /// The trail entry read next.
    pub fn next_to_read(&self) -> u64 {
        self.read_to.next_sequence
    }

    /// Takes the next entry of the trail: queued if it is an incident (skipping the oldest queued one if
    /// the backlog is full; returns whether one was), passed over otherwise.
    pub fn read(&mut self, entry: Entry, hash: Hash, incident: bool) -> bool {
        assert!(
            entry.sequence >= self.read_to.next_sequence,
            "the trail is read forward: entry {} after {}",
            entry.sequence,
            self.read_to.next_sequence
        );
        self.read_to = Cursor {
            next_sequence: entry.sequence + 1,
            previous: hash,
        };
        if !incident {
            return false;
        }
        self.incidents.push_back(Incident { entry, hash });
        if self.incidents.len() <= self.bound {
            return false;
        }
        let oldest = self.incidents.pop_front().expect("over the bound, so not empty");
        let gap = self.gap.get_or_insert(Gap {
            first: oldest.entry.sequence,
            last: oldest.entry.sequence,
            incidents: 0,
        });
        gap.last = oldest.entry.sequence;
        gap.incidents += 1;
        true
    }

    /// What to deliver next: the gap notice first, then incidents in trail order.
    pub fn head(&self) -> Option<Head<'_>> {
        match &self.gap {
            Some(gap) => Some(Head::Gap(gap)),
            None => self.incidents.front().map(Head::Incident),
        }
    }

    /// The head was acknowledged: drops it and returns the cursor to persist — everything before it is
    /// delivered or announced.
    pub fn delivered(&mut self) -> Cursor {
        if self.gap.take().is_none() {
            self.incidents.pop_front().expect("a head was delivered");
        }
        match self.head() {
            // Everything before the next one owed is delivered: its predecessor's hash is in it.
            Some(Head::Incident(next)) => Cursor {
                next_sequence: next.entry.sequence,
                previous: next.entry.previous,
            },
            // A gap is made only by a full backlog, so incidents always follow it.
            Some(Head::Gap(_)) => unreachable!("a gap only ever precedes the incidents"),
            None => self.read_to,
        }
    }

    /// Incidents owed (the gap notice, if any, not counted).
    pub fn len(&self) -> usize {
        self.incidents.len()
    }

    /// Nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.gap.is_none() && self.incidents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit::Event;

    fn entry(sequence: u64) -> (Entry, Hash) {
        let entry = Entry {
            sequence,
            previous: [sequence as u8; 32],
            time_unix_ms: 1_000 + sequence,
            event: Event::PurgeFailed {
                group: "users-eu".into(),
                reason: format!("test {sequence}"),
            },
        };
        (entry, [sequence as u8 + 1; 32])
    }

    fn read(backlog: &mut Backlog, sequence: u64, incident: bool) -> bool {
        let (entry, hash) = entry(sequence);
        backlog.read(entry, hash, incident)
    }

    fn head_sequence(backlog: &Backlog) -> Option<u64> {
        match backlog.head()? {
            Head::Incident(incident) => Some(incident.entry.sequence),
            Head::Gap(gap) => panic!("a gap {gap:?}"),
        }
    }

    #[test]
    fn incidents_go_out_in_trail_order_and_the_cursor_follows() {
        let mut backlog = Backlog::new(10, Cursor::START);
        read(&mut backlog, 0, false);
        read(&mut backlog, 1, true);
        read(&mut backlog, 2, false);
        read(&mut backlog, 3, true);
        read(&mut backlog, 4, false);
        assert_eq!(backlog.len(), 2);
        assert_eq!(head_sequence(&backlog), Some(1));
        let cursor = backlog.delivered();
        assert_eq!(cursor.next_sequence, 3, "entry 2 is not an incident, 3 is owed");
        assert_eq!(cursor.previous, entry(3).0.previous);
        assert_eq!(head_sequence(&backlog), Some(3));
        let cursor = backlog.delivered();
        assert_eq!(cursor.next_sequence, 5, "everything read is delivered");
        assert_eq!(cursor.previous, entry(4).1);
        assert!(backlog.is_empty());
        assert_eq!(backlog.next_to_read(), 5);
    }

    #[test]
    fn a_full_backlog_skips_the_oldest_into_one_gap_notice_sent_first() {
        let mut backlog = Backlog::new(2, Cursor::START);
        let skipped: Vec<bool> = (0..7)
            .map(|sequence| read(&mut backlog, sequence, sequence != 3))
            .collect();
        assert_eq!(skipped, [false, false, true, false, true, true, true]);
        assert_eq!(backlog.len(), 2);
        let Some(Head::Gap(gap)) = backlog.head() else {
            panic!("the gap notice goes first");
        };
        assert_eq!(
            (gap.first, gap.last, gap.incidents),
            (0, 4, 4),
            "0, 1, 2 and 4; 3 is no incident"
        );
        let cursor = backlog.delivered();
        assert_eq!(cursor.next_sequence, 5, "the next owed is 5");
        assert_eq!(head_sequence(&backlog), Some(5));
        backlog.delivered();
        assert_eq!(head_sequence(&backlog), Some(6));
        assert_eq!(backlog.delivered().next_sequence, 7);
        assert!(backlog.head().is_none());
    }

    #[test]
    fn a_head_that_keeps_failing_is_skipped_when_newer_ones_push_it_out() {
        let mut backlog = Backlog::new(1, Cursor::START);
        read(&mut backlog, 0, true);
        assert_eq!(head_sequence(&backlog), Some(0));
        // The receiver is down; 1 and 2 arrive meanwhile.
        read(&mut backlog, 1, true);
        read(&mut backlog, 2, true);
        let Some(Head::Gap(gap)) = backlog.head() else {
            panic!("a gap");
        };
        assert_eq!((gap.first, gap.last, gap.incidents), (0, 1, 2));
        backlog.delivered();
        assert_eq!(head_sequence(&backlog), Some(2));
    }
}

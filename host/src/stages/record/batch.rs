//! A batch as the stages hand it on: what the store writes in one
//! transaction, and the offsets it advances. Apart from the plain records
//! because it is the one with rules of its own (merging, splitting by
//! partition, setting deferred records aside) that the writers rely on to
//! keep each partition's records in order.

use std::collections::BTreeMap;

use super::{Consumed, DeadLetter, Dropped, Event, Provenance, RawEvent};

/// One transaction's worth of work.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Events to store.
    pub events: Vec<Event>,
    /// Records to dead-letter.
    pub dead_letters: Vec<DeadLetter>,
    /// Records a transform dropped.
    pub dropped: Vec<Dropped>,
    /// Per (topic, partition): the offset after the last record in the batch.
    pub next_offsets: BTreeMap<(String, i32), i64>,
    /// Per (topic, partition): the first offset in the batch.
    pub first_offsets: BTreeMap<(String, i32), i64>,
}

impl WriteBatch {
    /// Notes that `provenance`'s record is part of this batch.
    pub fn saw(&mut self, provenance: &Provenance) {
        let next = self.next_offsets.entry((provenance.topic.clone(), provenance.partition)).or_insert(0);
        *next = (*next).max(provenance.offset + 1);
        let first = self.first_offsets.entry((provenance.topic.clone(), provenance.partition)).or_insert(i64::MAX);
        *first = (*first).min(provenance.offset);
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len() + self.dropped.len()
    }

    /// Where each record of the batch came from: events, dead letters,
    /// then drops.
    pub fn provenances(&self) -> impl Iterator<Item = &Provenance> {
        let events = self.events.iter().map(|e| &e.provenance);
        events.chain(self.dead_letters.iter().map(|d| &d.provenance)).chain(self.dropped.iter().map(|d| &d.provenance))
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a later batch: its records after this one's, offsets widened.
    pub fn merge(&mut self, later: WriteBatch) {
        self.events.extend(later.events);
        self.dead_letters.extend(later.dead_letters);
        self.dropped.extend(later.dropped);
        for (key, next) in later.next_offsets {
            let n = self.next_offsets.entry(key).or_insert(next);
            *n = (*n).max(next);
        }
        for (key, first) in later.first_offsets {
            let f = self.first_offsets.entry(key).or_insert(first);
            *f = (*f).min(first);
        }
    }

    /// Takes out the records a write left for later ([`deferred`]: per
    /// partition, the offset from which nothing was written) into a batch
    /// of their own, in order, with its own offsets; this batch keeps what
    /// was written, its next offsets cut back to match.
    ///
    /// [`deferred`]: crate::stages::store::WriteOutcome::deferred
    pub fn split_off_deferred(&mut self, deferred: &BTreeMap<(String, i32), i64>) -> WriteBatch {
        let mut rest = WriteBatch::default();
        if deferred.is_empty() {
            return rest;
        }
        let later = |p: &Provenance| deferred.get(&(p.topic.clone(), p.partition)).is_some_and(|cut| p.offset >= *cut);
        (rest.events, self.events) = std::mem::take(&mut self.events).into_iter().partition(|e| later(&e.provenance));
        (rest.dead_letters, self.dead_letters) = std::mem::take(&mut self.dead_letters).into_iter().partition(|d| later(&d.provenance));
        (rest.dropped, self.dropped) = std::mem::take(&mut self.dropped).into_iter().partition(|d| later(&d.provenance));
        for (key, cut) in deferred {
            if let Some(next) = self.next_offsets.get_mut(key) {
                rest.next_offsets.insert(key.clone(), *next);
                rest.first_offsets.insert(key.clone(), *cut);
                *next = (*next).min(*cut);
            }
        }
        rest
    }

    /// Splits the batch into `n` by partition: every record and offset of a
    /// (topic, partition) goes to part [`part_of`]`(topic, partition, n)`, in
    /// the batch's order. Parts with no partition are empty.
    pub fn split(self, n: usize) -> Vec<WriteBatch> {
        let mut parts: Vec<WriteBatch> = (0..n).map(|_| WriteBatch::default()).collect();
        let of = |p: &Provenance| part_of(&p.topic, p.partition, n);
        for e in self.events {
            parts[of(&e.provenance)].events.push(e);
        }
        for d in self.dead_letters {
            parts[of(&d.provenance)].dead_letters.push(d);
        }
        for d in self.dropped {
            parts[of(&d.provenance)].dropped.push(d);
        }
        for ((topic, partition), next) in self.next_offsets {
            let i = part_of(&topic, partition, n);
            parts[i].next_offsets.insert((topic, partition), next);
        }
        for ((topic, partition), first) in self.first_offsets {
            let i = part_of(&topic, partition, n);
            parts[i].first_offsets.insert((topic, partition), first);
        }
        parts
    }
}

/// Which of `n` parts a (topic, partition) belongs to: always the same one,
/// so one writer stores a partition's batches in order. Partitions of a
/// topic go round-robin; the topic's name shifts where it starts.
pub fn part_of(topic: &str, partition: i32, n: usize) -> usize {
    let shift = topic.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (shift as usize).wrapping_add(partition.max(0) as usize) % n.max(1)
}

/// A batch after decoding: the clicks with the records they came from, and
/// the write batch so far (a dead letter per refused record, the offsets of
/// every record).
#[derive(Debug, Default)]
pub struct Decoded {
    /// What the later stages fill in and the store writes.
    pub batch: WriteBatch,
    /// The decoded clicks.
    pub events: Vec<RawEvent>,
    /// The record each click came from, in the same order.
    pub origins: Vec<Consumed>,
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn dropped(topic: &str, partition: i32, offset: i64) -> Dropped {
        Dropped {
            provenance: Provenance { topic: topic.into(), partition, offset, received_at: Utc::now() },
            transform: "t".into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn a_batch_splits_by_partition_keeping_each_partitions_records_and_offsets_together_in_order() {
        let mut batch = WriteBatch::default();
        for (partition, offset) in [(0, 10), (1, 20), (2, 30), (0, 11), (3, 40), (1, 21)] {
            let d = dropped("clicks", partition, offset);
            batch.saw(&d.provenance);
            batch.dropped.push(d);
        }
        let parts = batch.split(2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.iter().map(WriteBatch::len).sum::<usize>(), 6);
        for part in &parts {
            for d in &part.dropped {
                let key = (d.provenance.topic.clone(), d.provenance.partition);
                assert!(part.next_offsets.contains_key(&key) && part.first_offsets.contains_key(&key));
                assert_eq!(part_of("clicks", d.provenance.partition, 2), parts.iter().position(|p| std::ptr::eq(p, part)).unwrap());
            }
            let offsets: Vec<i64> = part.dropped.iter().filter(|d| d.provenance.partition == 0).map(|d| d.provenance.offset).collect();
            assert!(offsets.is_empty() || offsets == [10, 11], "{offsets:?}");
            assert!(part.next_offsets.keys().all(|(t, p)| part_of(t, *p, 2) == part_of("clicks", *p, 2)));
        }
        assert_ne!(part_of("clicks", 0, 2), part_of("clicks", 1, 2), "neighbouring partitions go to different parts");
        assert_eq!(WriteBatch::default().split(1).len(), 1);
    }

    #[test]
    fn merged_batches_keep_their_order_and_span_both_offset_ranges() {
        let part = |offsets: &[(i32, i64)]| {
            let mut b = WriteBatch::default();
            for &(p, o) in offsets {
                let d = dropped("clicks", p, o);
                b.saw(&d.provenance);
                b.dropped.push(d);
            }
            b
        };
        let mut first = part(&[(0, 10), (0, 11), (1, 5)]);
        first.merge(part(&[(0, 12), (2, 7)]));
        let offsets: Vec<(i32, i64)> = first.dropped.iter().map(|d| (d.provenance.partition, d.provenance.offset)).collect();
        assert_eq!(offsets, [(0, 10), (0, 11), (1, 5), (0, 12), (2, 7)]);
        let key = |p: i32| ("clicks".to_string(), p);
        assert_eq!((first.first_offsets[&key(0)], first.next_offsets[&key(0)]), (10, 13));
        assert_eq!((first.first_offsets[&key(1)], first.next_offsets[&key(1)]), (5, 6));
        assert_eq!((first.first_offsets[&key(2)], first.next_offsets[&key(2)]), (7, 8));
    }
}

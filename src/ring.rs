//! A capped log of records ordered by id (`MS-SEQ`), read a page at a time
//! from an instant or after an id: what a capped Redis stream (`XADD MAXLEN
//! ~`, `XRANGE`) is, kept in memory. The audit trail (`crate::audit`) and
//! the quota alert events (`crate::alerts`) keep one each on the memory
//! backends, and read their Redis streams with [`xrange`], so both stores
//! page alike: by `since_ms`, then after the last id shown.

use std::collections::VecDeque;

/// A record of a ring: it carries its id and its time.
pub trait Stamped {
    /// The record's id (`MS-SEQ`); empty until appended.
    fn id(&self) -> &str;
    /// Sets the id.
    fn set_id(&mut self, id: String);
    /// Its time, ms since the epoch (the id's `MS` is never earlier).
    fn time_ms(&self) -> u64;
}

/// The last records appended, oldest first.
#[derive(Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Self { items: VecDeque::new() }
    }
}

impl<T: Stamped + Clone> Ring<T> {
    /// Appends `record`, keeping the last `max`. Its id is `MS-SEQ` like a
    /// Redis stream's: its time, and a sequence within that ms (never below
    /// the last id: ids only grow). Returns the id.
    pub fn push(&mut self, mut record: T, max: usize) -> String {
        let (ms, seq) = match self.items.back().and_then(|r| parse_id(r.id())) {
            Some((last, seq)) if last >= record.time_ms() => (last, seq + 1),
            _ => (record.time_ms(), 0),
        };
        let id = format!("{ms}-{seq}");
        record.set_id(id.clone());
        self.items.push_back(record);
        while self.items.len() > max.max(1) {
            self.items.pop_front();
        }
        id
    }

    /// Up to `limit` records after the one with id `after`, or else from
    /// `since_ms`, oldest first.
    pub fn page(&self, since_ms: u64, after: Option<&str>, limit: usize) -> Vec<T> {
        let start = match after.and_then(parse_id) {
            Some(a) => self.items.partition_point(|r| parse_id(r.id()).is_some_and(|id| id <= a)),
            None => self.items.partition_point(|r| parse_id(r.id()).is_some_and(|(ms, _)| ms < since_ms)),
        };
        self.items.iter().skip(start).take(limit).cloned().collect()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A record's id (`MS-SEQ`) as numbers, to order by.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Up to `limit` entries of the Redis stream `key` after the entry `after`,
/// or else from `since_ms`, oldest first (`XRANGE`): [`Ring::page`] in Redis.
pub async fn xrange<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &str,
    since_ms: u64,
    after: Option<&str>,
    limit: usize,
) -> redis::RedisResult<redis::streams::StreamRangeReply> {
    let start = match after {
        Some(a) => format!("({a}"),
        None => format!("{since_ms}-0"),
    };
    redis::cmd("XRANGE").arg(key).arg(start).arg("+").arg("COUNT").arg(limit).query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct R(String, u64);
    impl Stamped for R {
        fn id(&self) -> &str {
            &self.0
        }
        fn set_id(&mut self, id: String) {
            self.0 = id;
        }
        fn time_ms(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn ids_grow_pages_follow_them_and_the_oldest_go() {
        let mut ring = Ring::default();
        assert_eq!(ring.push(R(String::new(), 5), 3), "5-0");
        assert_eq!(ring.push(R(String::new(), 5), 3), "5-1");
        // a clock that went back still gets a later id
        assert_eq!(ring.push(R(String::new(), 4), 3), "5-2");
        assert_eq!(ring.push(R(String::new(), 9), 3), "9-0");
        assert_eq!(ring.len(), 3);
        let ids = |v: Vec<R>| v.into_iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(ids(ring.page(0, None, 10)), ["5-1", "5-2", "9-0"]);
        assert_eq!(ids(ring.page(6, None, 10)), ["9-0"]);
        assert_eq!(ids(ring.page(0, Some("5-1"), 1)), ["5-2"]);
        assert_eq!(ids(ring.page(0, Some("9-0"), 1)), Vec::<String>::new());
    }
}

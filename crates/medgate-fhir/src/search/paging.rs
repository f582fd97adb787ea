//! Stable paging: keyset pages over (sort key, id), within a snapshot.
//!
//! A page link carries the snapshot time of the first page and the sort position of the last
//! (or first) resource shown, never an offset. Resources stored after the first page are left
//! out of every later page, so `total` stays what the first page said; a resource that changed
//! or disappeared meanwhile shifts nothing, because the next page starts after a position, not
//! after a count. Ties of the sort key are broken by id, so the order is total.
//!
//! Boundary: candidates in memory in, one page out. Sort keys are dates as microseconds since
//! the epoch; a resource without the sorted element sorts last in either direction.

use std::cmp::Ordering;

use serde_json::Value;

use super::date;
use super::matching::select;
use super::params::SortDef;

/// A resource that may be in the result, and when the gateway stored it (microseconds since
/// the epoch), for the snapshot; `None` when unknown (always inside the snapshot).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub resource: Value,
    pub stored_at: Option<i64>,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dir {
    /// The first page of the snapshot.
    First,
    /// The page after this position.
    After(Position),
    /// The page before this position.
    Before(Position),
}

/// A resource's place in the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub key: Option<i64>,
    pub id: String,
}

/// What a page link says: the snapshot and where the page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub at: i64,
    pub dir: Dir,
}

impl Cursor {
    /// `f<at>`, `a<at>~<key>~<id>` or `b<at>~<key>~<id>`; `-` for a missing key.
    pub(crate) fn encode(&self) -> String {
        let pos = |p: &Position| format!("{}~{}", p.key.map_or_else(|| "-".to_owned(), |k| k.to_string()), p.id);
        match &self.dir {
            Dir::First => format!("f{}", self.at),
            Dir::After(p) => format!("a{}~{}", self.at, pos(p)),
            Dir::Before(p) => format!("b{}~{}", self.at, pos(p)),
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Cursor> {
        let mut chars = s.chars();
        let kind = chars.next()?;
        let rest = chars.as_str();
        if kind == 'f' {
            return Some(Cursor { at: rest.parse().ok()?, dir: Dir::First });
        }
        let mut parts = rest.splitn(3, '~');
        let at = parts.next()?.parse().ok()?;
        let key = match parts.next()? {
            "-" => None,
            k => Some(k.parse().ok()?),
        };
        let id = parts.next()?.to_owned();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return None;
        }
        let p = Position { key, id };
        match kind {
            'a' => Some(Cursor { at, dir: Dir::After(p) }),
            'b' => Some(Cursor { at, dir: Dir::Before(p) }),
            _ => None,
        }
    }
}

/// One page of matches, in order, and the positions that start its neighbours.
#[derive(Debug)]
pub struct Page {
    /// Matches in the snapshot, over all pages.
    pub total: usize,
    pub resources: Vec<Value>,
    pub(crate) at: i64,
    pub(crate) next: Option<Position>,
    pub(crate) previous: Option<Position>,
}

/// The sort position of a resource.
pub(crate) fn position(resource: &Value, sort: &SortDef) -> Position {
    let key = select(resource, sort.path).first().and_then(|v| v.as_str()).and_then(date::parse_range).map(|r| r.lo);
    let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    Position { key, id }
}

/// Order of positions: by key (descending when asked), a missing key last, then by id.
pub(crate) fn compare(a: &Position, b: &Position, descending: bool) -> Ordering {
    let by_key = match (a.key, b.key) {
        (Some(x), Some(y)) if descending => y.cmp(&x),
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_key.then_with(|| a.id.cmp(&b.id))
}

/// Sorts `matches` (already filtered, inside the snapshot `at`) and cuts the page `cursor` asks
/// for, of at most `count` resources (0: none, the count only).
pub(crate) fn cut(mut matches: Vec<(Position, Value)>, at: i64, dir: &Dir, count: usize, descending: bool) -> Page {
    matches.sort_by(|a, b| compare(&a.0, &b.0, descending));
    let total = matches.len();
    let (start, end) = match dir {
        Dir::First => (0, count.min(total)),
        Dir::After(p) => {
            let start = matches.partition_point(|(q, _)| compare(q, p, descending) != Ordering::Greater);
            (start, (start + count).min(total))
        }
        Dir::Before(p) => {
            let end = matches.partition_point(|(q, _)| compare(q, p, descending) == Ordering::Less);
            (end.saturating_sub(count), end)
        }
    };
    // An empty page (after the last match, once matches went away) links nowhere.
    let next = (count > 0 && end > start && end < total).then(|| matches[end - 1].0.clone());
    let previous = (count > 0 && end > start && start > 0).then(|| matches[start].0.clone());
    let resources = matches.drain(start..end).map(|(_, v)| v).collect();
    Page { total, resources, at, next, previous }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SORT: SortDef = SortDef { name: "date", path: "date" };

    fn doc(id: &str, date: Option<&str>) -> Value {
        match date {
            Some(d) => json!({"id": id, "date": d}),
            None => json!({"id": id}),
        }
    }

    fn ids(p: &Page) -> Vec<String> {
        p.resources.iter().map(|r| r["id"].as_str().unwrap_or_default().to_owned()).collect()
    }

    fn with_positions(docs: &[Value]) -> Vec<(Position, Value)> {
        docs.iter().map(|d| (position(d, &SORT), d.clone())).collect()
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        for c in [
            Cursor { at: 17, dir: Dir::First },
            Cursor { at: 17, dir: Dir::After(Position { key: Some(-5), id: "ab12".into() }) },
            Cursor { at: 17, dir: Dir::Before(Position { key: None, id: "x.y-z".into() }) },
        ] {
            assert_eq!(Cursor::parse(&c.encode()), Some(c));
        }
        for bad in ["", "f", "fx", "a1~2", "a1~2~", "z1~2~id", "a1~k~id", "a1~2~id with space", "a1~2~../x"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn newest_first_with_missing_dates_last_and_ties_by_id() {
        let docs = [doc("b", Some("2024-01-02")), doc("a", Some("2024-01-02")), doc("c", None), doc("d", Some("2024-01-03"))];
        let p = cut(with_positions(&docs), 0, &Dir::First, 10, true);
        assert_eq!(ids(&p), ["d", "a", "b", "c"]);
        let p = cut(with_positions(&docs), 0, &Dir::First, 10, false);
        assert_eq!(ids(&p), ["a", "b", "d", "c"]);
    }

    #[test]
    fn pages_walk_forward_and_back_without_gaps_or_repeats() {
        let docs: Vec<Value> = (0..7).map(|i| doc(&format!("d{i}"), Some(&format!("2024-01-0{}", i % 3 + 1)))).collect();
        let all = ids(&cut(with_positions(&docs), 0, &Dir::First, 100, true));
        let mut seen = Vec::new();
        let mut dir = Dir::First;
        let mut pages = Vec::new();
        loop {
            let p = cut(with_positions(&docs), 0, &dir, 3, true);
            assert_eq!(p.total, 7);
            seen.extend(ids(&p));
            pages.push(ids(&p));
            match p.next {
                Some(n) => dir = Dir::After(n),
                None => break,
            }
        }
        assert_eq!(seen, all);
        assert_eq!(pages.len(), 3);
        // Back from the last page.
        let last = cut(with_positions(&docs), 0, &dir, 3, true);
        let back = cut(with_positions(&docs), 0, &Dir::Before(last.previous.expect("previous")), 3, true);
        assert_eq!(ids(&back), pages[1]);
        let first = cut(with_positions(&docs), 0, &Dir::Before(back.previous.expect("previous")), 3, true);
        assert_eq!(ids(&first), pages[0]);
        assert!(first.previous.is_none());
    }

    #[test]
    fn a_resource_that_leaves_between_pages_shifts_nothing() {
        let docs: Vec<Value> = (0..6).map(|i| doc(&format!("d{i}"), Some(&format!("2024-02-0{}", i + 1)))).collect();
        let p1 = cut(with_positions(&docs), 0, &Dir::First, 2, true);
        assert_eq!(ids(&p1), ["d5", "d4"]);
        // d4 (shown) and d2 (not yet shown) disappear before page 2 is asked for.
        let fewer: Vec<Value> = docs.iter().filter(|d| d["id"] != "d4" && d["id"] != "d2").cloned().collect();
        let p2 = cut(with_positions(&fewer), 0, &Dir::After(p1.next.expect("next")), 2, true);
        assert_eq!(ids(&p2), ["d3", "d1"]);
    }

    #[test]
    fn count_zero_gives_the_total_only() {
        let docs = [doc("a", Some("2024")), doc("b", None)];
        let p = cut(with_positions(&docs), 0, &Dir::First, 0, true);
        assert_eq!(p.total, 2);
        assert!(p.resources.is_empty() && p.next.is_none() && p.previous.is_none());
    }
}

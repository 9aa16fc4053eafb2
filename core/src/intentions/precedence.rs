//! Precedence (Consul docs: Intentions, precedence): which intention wins when several cover the
//! same connection.

use std::borrow::Borrow;
use std::cmp::Ordering;

use super::{Intention, WILDCARD};

/// How many of (namespace, name) are exact. A wildcard namespace counts as two wildcards
/// because an exact name cannot follow it.
fn count_exact(namespace: &str, name: &str) -> u32 {
    if namespace == WILDCARD {
        0
    } else if name == WILDCARD {
        1
    } else {
        2
    }
}

impl Intention {
    /// The precedence this intention's wildcards give it, 1 (`*/*` to `*/*`) to 9 (all exact).
    ///
    /// The destination dominates: every exact destination outranks every wildcard one, and only
    /// then does the source's exactness count. Partitions and peers play no part.
    pub fn compute_precedence(&self) -> u32 {
        let max = match count_exact(&self.destination_ns, &self.destination_name) {
            2 => 9,
            1 => 6,
            _ => 3,
        };
        max - (2 - count_exact(&self.source_ns, &self.source_name))
    }
}

/// Evaluation order: higher [`Intention::precedence`] first, ties broken by
/// (SourceNS, SourceName, DestinationNS, DestinationName) in byte order.
///
/// The tie-break never changes a decision (tied intentions cannot both match one connection
/// unless they are duplicates); it keeps lists, and therefore API output, deterministic.
pub fn compare_precedence(a: &Intention, b: &Intention) -> Ordering {
    b.precedence
        .cmp(&a.precedence)
        .then_with(|| a.source_ns.cmp(&b.source_ns))
        .then_with(|| a.source_name.cmp(&b.source_name))
        .then_with(|| a.destination_ns.cmp(&b.destination_ns))
        .then_with(|| a.destination_name.cmp(&b.destination_name))
}

/// Sorts into evaluation order ([`compare_precedence`]); stable, so exact duplicates keep
/// their input order.
pub fn sort_by_precedence<T: Borrow<Intention>>(intentions: &mut [T]) {
    intentions.sort_by(|a, b| compare_precedence(a.borrow(), b.borrow()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (SourceNS, SourceName, DestinationNS, DestinationName), precedence computed.
    fn ixn(src_ns: &str, src: &str, dst_ns: &str, dst: &str) -> Intention {
        let mut ixn = Intention {
            source_ns: src_ns.into(),
            source_name: src.into(),
            destination_ns: dst_ns.into(),
            destination_name: dst.into(),
            ..Intention::default()
        };
        ixn.precedence = ixn.compute_precedence();
        ixn
    }

    fn tuples(list: &[Intention]) -> Vec<[&str; 4]> {
        list.iter()
            .map(|i| {
                [
                    i.source_ns.as_str(),
                    &i.source_name,
                    &i.destination_ns,
                    &i.destination_name,
                ]
            })
            .collect()
    }

    #[test]
    fn precedence_table() {
        // The nine rows of Consul's precedence table (Consul docs: Intentions):
        // (precedence, SrcNS, Src, DstNS, Dst).
        let rows = [
            (9, "exact", "exact", "exact", "exact"),
            (8, "exact", "*", "exact", "exact"),
            (7, "*", "*", "exact", "exact"),
            (6, "exact", "exact", "exact", "*"),
            (5, "exact", "*", "exact", "*"),
            (4, "*", "*", "exact", "*"),
            (3, "exact", "exact", "*", "*"),
            (2, "exact", "*", "*", "*"),
            (1, "*", "*", "*", "*"),
        ];
        for (want, src_ns, src, dst_ns, dst) in rows {
            assert_eq!(
                ixn(src_ns, src, dst_ns, dst).compute_precedence(),
                want,
                "{src_ns}/{src} => {dst_ns}/{dst}"
            );
        }
    }

    #[test]
    fn sorter_exhaustive_list() {
        let mut list = vec![
            ixn("*", "*", "exact", "*"),
            ixn("*", "*", "*", "*"),
            ixn("exact", "*", "exact", "exact"),
            ixn("*", "*", "exact", "exact"),
            ixn("exact", "exact", "*", "*"),
            ixn("exact", "exact", "exact", "exact"),
            ixn("exact", "exact", "exact", "*"),
            ixn("exact", "*", "exact", "*"),
            ixn("exact", "*", "*", "*"),
        ];
        sort_by_precedence(&mut list);
        assert_eq!(
            tuples(&list),
            [
                ["exact", "exact", "exact", "exact"],
                ["exact", "*", "exact", "exact"],
                ["*", "*", "exact", "exact"],
                ["exact", "exact", "exact", "*"],
                ["exact", "*", "exact", "*"],
                ["*", "*", "exact", "*"],
                ["exact", "exact", "*", "*"],
                ["exact", "*", "*", "*"],
                ["*", "*", "*", "*"],
            ]
        );
    }

    #[test]
    fn sorter_tiebreak_deterministically() {
        let mut list = vec![
            ixn("a", "*", "a", "b"),
            ixn("a", "*", "a", "a"),
            ixn("b", "a", "a", "a"),
            ixn("a", "b", "a", "a"),
            ixn("a", "a", "b", "a"),
            ixn("a", "a", "a", "b"),
            ixn("a", "a", "a", "a"),
        ];
        sort_by_precedence(&mut list);
        assert_eq!(
            tuples(&list),
            [
                ["a", "a", "a", "a"],
                ["a", "a", "a", "b"],
                ["a", "a", "b", "a"],
                ["a", "b", "a", "a"],
                ["b", "a", "a", "a"],
                ["a", "*", "a", "a"],
                ["a", "*", "a", "b"],
            ]
        );
    }

    #[test]
    fn sorting_uses_the_stored_precedence() {
        // Consul sorts by the stored field, which normalize() keeps in step with the wildcards;
        // a hand-set value is honoured rather than silently recomputed.
        let mut low = ixn("a", "a", "a", "a");
        low.precedence = 1;
        let mut list = vec![low, ixn("*", "*", "*", "*")];
        list[1].precedence = 5;
        sort_by_precedence(&mut list);
        assert_eq!(list[0].source_ns, "*");
    }
}

//! Counter declarations, one place per counter. A crate that keeps counters (the
//! engine, the AF_XDP backend, the leader tracker) declares them with
//! [`declare_stats!`]: the field, its doc comment (the metric's help), its kind and
//! its Prometheus name, and for a labelled family the label and its fixed values.
//! From that one declaration the macro generates the struct of atomics the hot path
//! writes (relaxed, single writer), a plain snapshot, and [`Family`] descriptions
//! with values that the gateway's exporter renders, so a counter cannot be collected
//! without being exported, nor exported under two spellings.
//!
//! No Prometheus dependency: the exporter lives with the service.
#![forbid(unsafe_code)]

pub use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Prometheus metric kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic.
    Counter,
    /// Goes up and down (or a 0/1 flag).
    Gauge,
}

/// One metric family as declared, with the values of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The metric name (`afterburner_…`).
    pub name: &'static str,
    /// The help text (the field's doc comment).
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// `(label value, value)` per series; the label value is `None` for an unlabelled
    /// metric (then there is exactly one series).
    pub series: Vec<(Option<&'static str>, u64)>,
    /// The label's name, for a labelled family.
    pub label: Option<&'static str>,
}

/// The help text from a declaration's doc comment (its lines, concatenated).
#[doc(hidden)]
pub fn help(doc: &'static str) -> &'static str {
    doc.trim()
}

/// Declares a struct of counters and everything generated from it.
///
/// ```
/// afterburner_stats::declare_stats! {
///     /// Example counters.
///     pub struct DemoStats, snapshot DemoSnapshot {
///         /// Things done.
///         done: Counter "demo_done_total",
///         /// Things open now.
///         open: Gauge "demo_open",
///     }
///     labelled {
///         /// Things failed, by why.
///         failed["why" in ["a", "b"]]: Counter "demo_failed_total",
///     }
/// }
/// let s = DemoStats::default();
/// s.done.fetch_add(1, afterburner_stats::Relaxed);
/// s.failed[1].fetch_add(2, afterburner_stats::Relaxed);
/// let families = s.snapshot().families();
/// assert_eq!(families.len(), 3);
/// assert_eq!(families[2].series, [(Some("a"), 0), (Some("b"), 2)]);
/// assert_eq!(DemoStats::METRIC_NAMES, ["demo_done_total", "demo_open", "demo_failed_total"]);
/// ```
#[macro_export]
macro_rules! declare_stats {
    (
        $(#[$meta:meta])*
        pub struct $stats:ident, snapshot $snap:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $kind:ident $name:literal, )*
        }
        labelled {
            $( $(#[doc = $ldoc:literal])* $lfield:ident [ $label:literal in $labels:expr ] : $lkind:ident $lname:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $stats {
            $( $(#[doc = $doc])* pub $field: $crate::AtomicU64, )*
            $( $(#[doc = $ldoc])* pub $lfield: [$crate::AtomicU64; $labels.len()], )*
        }

        /// A point-in-time copy of the counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $snap {
            $( $(#[doc = $doc])* pub $field: u64, )*
            $( $(#[doc = $ldoc])* pub $lfield: [u64; $labels.len()], )*
        }

        impl $stats {
            /// Every metric name declared here, in declaration order.
            pub const METRIC_NAMES: &'static [&'static str] = &[$($name,)* $($lname,)*];

            /// Reads every counter.
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $( $field: self.$field.load($crate::Relaxed), )*
                    $( $lfield: ::core::array::from_fn(|i| self.$lfield[i].load($crate::Relaxed)), )*
                }
            }
        }

        impl $snap {
            /// Every declared metric with its values, in declaration order.
            pub fn families(&self) -> ::std::vec::Vec<$crate::Family> {
                ::std::vec![
                    $( $crate::Family {
                        name: $name,
                        help: $crate::help(concat!($($doc),*)),
                        kind: $crate::Kind::$kind,
                        series: ::std::vec![(None, self.$field)],
                        label: None,
                    }, )*
                    $( $crate::Family {
                        name: $lname,
                        help: $crate::help(concat!($($ldoc),*)),
                        kind: $crate::Kind::$lkind,
                        series: $labels
                            .iter()
                            .zip(self.$lfield.iter())
                            .map(|(l, v)| (Some(*l), *v))
                            .collect(),
                        label: Some($label),
                    }, )*
                ]
            }
        }
    };
}

#[cfg(test)]
mod tests {
    const REASONS: [&str; 2] = ["x", "y"];

    declare_stats! {
        /// Test counters.
        pub struct TestStats, snapshot TestSnapshot {
            /// First line of help.
            /// Second line.
            a: Counter "t_a_total",
            /// A gauge.
            b: Gauge "t_b",
        }
        labelled {
            /// By reason.
            c["reason" in REASONS]: Counter "t_c_total",
        }
    }

    #[test]
    fn families_follow_the_declaration() {
        let s = TestStats::default();
        s.a.fetch_add(3, super::Relaxed);
        s.b.store(7, super::Relaxed);
        s.c[0].fetch_add(1, super::Relaxed);
        let f = s.snapshot().families();
        let names: Vec<_> = f.iter().map(|f| f.name).collect();
        assert_eq!(names, TestStats::METRIC_NAMES);
        assert_eq!(f[0].help, "First line of help. Second line.");
        assert_eq!(f[0].series, [(None, 3)]);
        assert_eq!(f[1].kind, super::Kind::Gauge);
        assert_eq!(f[2].label, Some("reason"));
        assert_eq!(f[2].series, [(Some("x"), 1), (Some("y"), 0)]);
    }
}

//! Reading the Prometheus text format back in tests.

/// The sum of `name`'s samples in `text` (the exposition format) whose label set
/// contains `labels` (`""`: all of them).
pub fn sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_family_or_a_labelled_part_of_it() {
        let text =
            "# HELP x_total x\nx_total{r=\"a\"} 2\nx_total{r=\"b\"} 3\nx_total_more 9\nx 1\n";
        assert_eq!(super::sum(text, "x_total", ""), 5.0);
        assert_eq!(super::sum(text, "x_total", "r=\"b\""), 3.0);
        assert_eq!(super::sum(text, "x", ""), 1.0);
    }
}

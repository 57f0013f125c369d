//! [`Method`]: the RPC calls the tracker makes, named for error accounting (used by
//! [`crate::source`], which makes them, and [`crate::stats`], which counts their
//! failures).

/// The RPC methods used, for error accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `getSlot` (processed).
    GetSlot,
    /// `getEpochSchedule`.
    GetEpochSchedule,
    /// `getSlotLeaders`.
    GetSlotLeaders,
    /// `getClusterNodes`.
    GetClusterNodes,
}

impl Method {
    /// Every method, in [`Self::index`] order.
    pub const ALL: [Method; 4] = [
        Method::GetSlot,
        Method::GetEpochSchedule,
        Method::GetSlotLeaders,
        Method::GetClusterNodes,
    ];

    /// The JSON-RPC method names (metric labels), in [`Self::index`] order.
    pub const NAMES: [&'static str; 4] = [
        "getSlot",
        "getEpochSchedule",
        "getSlotLeaders",
        "getClusterNodes",
    ];

    /// The JSON-RPC method name (a metric label).
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_index() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        assert_eq!(Method::GetSlotLeaders.name(), "getSlotLeaders");
    }
}

//! Proto timestamps and chrono, both ways.

use chrono::{DateTime, Utc};

/// The protobuf form of a chrono time, to the nanosecond.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// `None` for a timestamp chrono cannot represent (negative nanos, out of range).
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_survives_the_round_trip_and_a_negative_nano_is_refused() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123456789Z").unwrap().with_timezone(&Utc);
        assert_eq!(from_timestamp(&timestamp(at)), Some(at));
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: 1, nanos: -1 }), None);
    }
}

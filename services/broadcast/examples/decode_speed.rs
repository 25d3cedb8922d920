//! How long reading one DeliveryStatus from JSON takes, the fast way (borrowed fields) and the
//! slow way (a tree of values first): the same statuses, once as publishers send them and once
//! with an escaped `.` in the message id, which the fast way declines. Both give the same
//! statuses. `cargo run --release -p broadcast --example decode_speed`
use broadcast::decode::{status_from_json, validate_status};
use std::time::Instant;

const STATUSES: u32 = 1_000_000;

fn payloads(dot: &str) -> Vec<Vec<u8>> {
    (0..STATUSES)
        .map(|i| {
            format!(
                "{{\"message_id\":\"wamid{dot}{i:08}\",\"status\":\"delivered\",\"timestamp\":\"2026-11-24T09:00:03+00:00\"}}"
            )
            .into_bytes()
        })
        .collect()
}

fn main() {
    let plain = payloads(".");
    let escaped = payloads("\\u002e");
    for round in 1..=3 {
        for (way, set) in [("fast", &plain), ("slow", &escaped)] {
            let started = Instant::now();
            let read = set.iter().filter(|p| status_from_json(p).and_then(validate_status).is_ok()).count();
            let nanos = started.elapsed().as_nanos() as f64 / f64::from(STATUSES);
            println!("round {round}, {way} way: {nanos:.0} ns per status ({read} read)");
        }
    }
}

//! Measures scoring and training speed. Run with
//! `cargo run --release -p qualification-model --features synthetic --example scoring_speed`.
//!
//! Scoring = observe one new message + build the vector + explain (with the prior or a learned model).

use std::hint::black_box;
use std::time::Instant;

use qualification_model::features::{Direction, LeadFeatures};
use qualification_model::learn::{TrainConfig, train};
use qualification_model::prior::Prior;
use qualification_model::synthetic::{SyntheticConfig, generate};

fn main() {
    let org = generate(&SyntheticConfig { leads: 600, ..SyntheticConfig::default() });
    let cfg = TrainConfig { trained_at: Some(org.now), ..TrainConfig::default() };
    let model = train(&org.examples(), &cfg).model().expect("model");
    let prior = Prior::new();

    // Each lead's state without its last inbound message, and that message (the one scored).
    let cases: Vec<(LeadFeatures, usize, usize)> = org
        .leads
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let last = l.messages.iter().rposition(|m| m.direction == Direction::Inbound)?;
            let mut f = LeadFeatures::new();
            l.messages.iter().enumerate().filter(|(k, _)| *k != last).for_each(|(_, m)| f.observe(&m.as_message()));
            Some((f, i, last))
        })
        .collect();
    let rounds = 20;
    let mut states: Vec<LeadFeatures> = Vec::with_capacity(cases.len() * rounds);
    for _ in 0..rounds {
        states.extend(cases.iter().map(|c| c.0.clone()));
    }
    let n = states.len();

    for (label, use_model) in [("prior", false), ("learned model", true)] {
        let mut s = states.clone();
        let start = Instant::now();
        for (k, f) in s.iter_mut().enumerate() {
            let (_, i, last) = &cases[k % cases.len()];
            f.observe(&org.leads[*i].messages[*last].as_message());
            let v = f.vector(org.now);
            let e = if use_model { model.explain(&v) } else { prior.explain(&v) };
            black_box(e);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("scoring with {label}: {us:.2} µs per message ({n} scorings)");
    }
    let mut s = states.clone();
    let start = Instant::now();
    for (k, f) in s.iter_mut().enumerate() {
        let (_, i, last) = &cases[k % cases.len()];
        f.observe(&org.leads[*i].messages[*last].as_message());
    }
    println!("  of which observe: {:.2} µs", start.elapsed().as_secs_f64() * 1e6 / n as f64);
    let start = Instant::now();
    for f in &s {
        black_box(f.vector(org.now));
    }
    println!("  of which vector:  {:.2} µs", start.elapsed().as_secs_f64() * 1e6 / n as f64);

    for leads in [600, 5_000] {
        let org = generate(&SyntheticConfig { leads, seed: 11, ..SyntheticConfig::default() });
        let ex = org.examples();
        let start = Instant::now();
        let m =
            train(&ex, &TrainConfig { trained_at: Some(org.now), ..TrainConfig::default() }).model().expect("model");
        println!(
            "training on {leads} leads: {:.2} s (holdout AUC {:.3}, prior {:.3}, {} weights, λ={})",
            start.elapsed().as_secs_f64(),
            m.holdout_auc,
            m.prior_holdout_auc,
            m.weights.len(),
            m.l2
        );
    }
}

//! Scores with reasons: the common output of the prior and of learned models.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One reason behind a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    /// What it is: a readable label for dense features ("intent signals"), or a hashed text feature name.
    pub name: String,
    /// Signed points on the 0–100 scale. The factors of an explanation (including any "other features"
    /// remainder) add up to the score minus the model's baseline (its score for an empty vector).
    pub contribution: f64,
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:+.0}", self.name, self.contribution)
    }
}

/// A score from 0 to 100 and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `round(100 × probability)`.
    pub score: u8,
    /// The (calibrated, for learned models) probability of conversion.
    pub probability: f64,
    /// Reasons, largest |contribution| first.
    pub factors: Vec<Factor>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.score)?;
        for (i, x) in self.factors.iter().enumerate() {
            write!(f, "{}{x}", if i == 0 { ": " } else { ", " })?;
        }
        Ok(())
    }
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Build an explanation from a baseline logit and named logit contributions.
///
/// Contributions are turned into points with the secant slope of the logistic between the baseline and the
/// final logit, so they add up exactly to `100 × (p − σ(baseline))`. At most `top` factors are listed; the
/// rest are summed into one `"other features"` factor (when not negligible).
pub fn explain_logits(baseline: f64, contributions: Vec<(String, f64)>, top: usize) -> Explanation {
    let names: Vec<String> = contributions.iter().map(|c| c.0.clone()).collect();
    let indexed: Vec<(u32, f64)> = contributions.iter().enumerate().map(|(i, c)| (i as u32, c.1)).collect();
    explain_indexed(baseline, &indexed, top, |i| names[i as usize].clone())
}

/// Like [`explain_logits`], with contributions keyed by feature index; `name` is only called for the
/// factors that are listed.
pub fn explain_indexed(
    baseline: f64,
    contributions: &[(u32, f64)],
    top: usize,
    name: impl Fn(u32) -> String,
) -> Explanation {
    let z = baseline + contributions.iter().map(|c| c.1).sum::<f64>();
    let p = sigmoid(z);
    let p0 = sigmoid(baseline);
    let slope = if (z - baseline).abs() > 1e-9 { (p - p0) / (z - baseline) } else { p * (1.0 - p) };
    let mut kept: Vec<(u32, f64)> = contributions.iter().copied().filter(|c| c.1 != 0.0).collect();
    let by_size = |a: &(u32, f64), b: &(u32, f64)| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0));
    let mut rest = 0.0;
    if kept.len() > top {
        if top > 0 {
            kept.select_nth_unstable_by(top - 1, by_size);
        }
        rest = kept[top..].iter().map(|c| c.1).sum::<f64>() * 100.0 * slope;
        kept.truncate(top);
    }
    kept.sort_by(by_size);
    let mut factors: Vec<Factor> =
        kept.into_iter().map(|(i, c)| Factor { name: name(i), contribution: 100.0 * slope * c }).collect();
    if rest.abs() >= 0.5 {
        factors.push(Factor { name: "other features".to_owned(), contribution: rest });
    }
    Explanation { score: (100.0 * p).round().clamp(0.0, 100.0) as u8, probability: p, factors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_add_up() {
        let e = explain_logits(-1.0, vec![("a".into(), 2.0), ("b".into(), -0.5), ("c".into(), 0.0)], 10);
        let sum: f64 = e.factors.iter().map(|f| f.contribution).sum();
        assert!((sum - 100.0 * (sigmoid(0.5) - sigmoid(-1.0))).abs() < 1e-9);
        assert_eq!(e.factors.len(), 2);
        assert_eq!(e.factors[0].name, "a");
        assert_eq!(e.score, 62);
        assert_eq!(e.factors[1].to_string(), "b -12");
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-12);
    }
}

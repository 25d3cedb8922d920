//! Per-organisation logistic regression over [`SparseVector`]s, with a held-out evaluation against the
//! prior and Platt calibration.
//!
//! [`train`]:
//! 1. refuses when either class has fewer than [`TrainConfig::min_per_class`] examples;
//! 2. splits off a stratified hold-out set ([`TrainConfig::holdout_fraction`], seeded shuffle);
//! 3. on the training part, runs stratified k-fold cross-validation for each L2 strength of
//!    [`TrainConfig::l2_grid`], keeps the one with the best out-of-fold log-loss, and fits Platt scaling
//!    (`p = σ(a·z + b)`) on its out-of-fold logits;
//! 4. fits the final weights on the whole training part (L-BFGS on the mean log-loss plus `λ/2·‖w‖²`,
//!    intercept not penalised; only the feature indices present in the data are optimised);
//! 5. reports the calibrated model's AUC on the hold-out set next to the prior's AUC on the same set, so the
//!    caller can keep the prior unless the learned model beats it ([`Model::beats_prior`]).
//!
//! Everything is deterministic given [`TrainConfig::seed`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::explain::{Explanation, explain_indexed, sigmoid};
use super::features::{DENSE_LABELS, DENSE_LEN, SparseVector, Vocabulary};
use super::prior::Prior;
use super::rng::SplitMix64;
use super::time::Timestamp;

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Minimum examples of each class (converted and lost); below it training is refused.
    pub min_per_class: usize,
    /// Share of each class held out for evaluation.
    pub holdout_fraction: f64,
    /// Seed of the hold-out and fold shuffles.
    pub seed: u64,
    /// L2 strengths tried by cross-validation (one value: no search).
    pub l2_grid: Vec<f64>,
    /// Cross-validation folds (for λ selection and calibration), at least 2.
    pub folds: usize,
    /// L-BFGS iterations per fit.
    pub max_iter: usize,
    /// Weights kept in the model (largest |w| first).
    pub max_weights: usize,
    /// Weights smaller than this in magnitude are dropped.
    pub epsilon: f64,
    /// Version stamped on the model.
    pub version: u32,
    /// Training time stamped on the model (`None`: now).
    pub trained_at: Option<Timestamp>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            min_per_class: 30,
            holdout_fraction: 0.25,
            seed: 0x005E_ED0F_1EAD,
            l2_grid: vec![1e-3, 3e-3, 1e-2],
            folds: 3,
            max_iter: 150,
            max_weights: 4096,
            epsilon: 1e-5,
            version: 1,
            trained_at: None,
        }
    }
}

/// A trained, calibrated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub version: u32,
    pub trained_at: Timestamp,
    /// Examples used for fitting (the hold-out set excluded).
    pub training_size: usize,
    /// Converted examples in the whole data set.
    pub positives: usize,
    /// Lost examples in the whole data set.
    pub negatives: usize,
    /// Examples in the hold-out set.
    pub holdout_size: usize,
    /// AUC of this model on the hold-out set.
    pub holdout_auc: f64,
    /// AUC of the built-in prior on the same hold-out set.
    pub prior_holdout_auc: f64,
    /// Mean calibrated probability on the hold-out set.
    pub holdout_mean_probability: f64,
    /// Share of converted examples in the hold-out set.
    pub holdout_base_rate: f64,
    /// Mean log-loss of the calibrated probabilities on the hold-out set.
    pub holdout_log_loss: f64,
    /// The chosen L2 strength.
    pub l2: f64,
    /// Raw logit intercept.
    pub intercept: f64,
    /// Platt scale: `p = σ(platt_a · raw_logit + platt_b)`.
    pub platt_a: f64,
    /// Platt offset.
    pub platt_b: f64,
    /// Non-zero weights `(index, weight)`, sorted by index, at most `max_weights`.
    pub weights: Vec<(u32, f32)>,
    /// Readable names of the strongest hashed features (at most [`NAMED_FEATURES`]), attached with
    /// [`Model::name_features`]: the organisation's words live here, with the model, and nowhere else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<u32, String>,
}

/// Why training did not produce a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub positives: usize,
    pub negatives: usize,
}

/// The result of [`train`].
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// A model, with its hold-out evaluation inside.
    Trained(Box<Model>),
    /// Not enough data (or degenerate data).
    Refused(Refusal),
}

impl TrainOutcome {
    /// The model, if one was trained.
    pub fn model(self) -> Option<Model> {
        match self {
            TrainOutcome::Trained(m) => Some(*m),
            TrainOutcome::Refused(_) => None,
        }
    }
}

/// Area under the ROC curve by the Mann–Whitney U statistic, ties counted as one half. `None` when one
/// class is absent or the lengths differ.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let pos = labels.iter().filter(|l| **l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        rank_sum += avg * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Examples re-indexed onto the features they use.
struct Data {
    rows: Vec<Vec<(u32, f64)>>,
    labels: Vec<bool>,
    dim: usize,
}

fn log_loss_term(z: f64, y: bool) -> f64 {
    // -log σ(z) for y, -log(1-σ(z)) otherwise, computed stably.
    let m = if y { -z } else { z };
    if m > 0.0 { m + (-m).exp().ln_1p() } else { m.exp().ln_1p() }
}

/// Minimise with L-BFGS; `f` returns the value and writes the gradient.
fn lbfgs(mut f: impl FnMut(&[f64], &mut [f64]) -> f64, mut x: Vec<f64>, max_iter: usize) -> Vec<f64> {
    const M: usize = 8;
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for iter in 0..max_iter {
        // Two-loop recursion: d = -H g.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &d);
            for (dj, yj) in d.iter_mut().zip(&y_hist[i]) {
                *dj -= alpha[i] * yj;
            }
        }
        if k > 0 {
            let gamma = dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1]);
            for v in &mut d {
                *v *= gamma;
            }
        }
        for i in 0..k {
            let beta = rho[i] * dot(&y_hist[i], &d);
            for (dj, sj) in d.iter_mut().zip(&s_hist[i]) {
                *dj += (alpha[i] - beta) * sj;
            }
        }
        let mut gd = dot(&g, &d);
        if gd >= 0.0 {
            d = g.iter().map(|v| -v).collect();
            gd = dot(&g, &d);
            s_hist.clear();
            y_hist.clear();
            rho.clear();
        }
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < 1e-7 {
            break;
        }
        let mut step = if iter == 0 && k == 0 { (1.0 / gnorm).min(1.0) } else { 1.0 };
        let mut f_new;
        let mut tries = 0;
        loop {
            for i in 0..n {
                x_new[i] = x[i] + step * d[i];
            }
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * gd || tries >= 40 {
                break;
            }
            step *= 0.5;
            tries += 1;
        }
        if f_new > fx {
            break;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        let improvement = fx - f_new;
        fx = f_new;
        if sy > 1e-12 {
            if s_hist.len() == M {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        if improvement < 1e-10 * fx.abs().max(1.0) {
            break;
        }
    }
    x
}

/// Fit weights (last element: intercept) on the rows `idx` of `data`.
fn fit(data: &Data, idx: &[usize], l2: f64, max_iter: usize) -> Vec<f64> {
    let n = idx.len() as f64;
    let dim = data.dim;
    let objective = |w: &[f64], g: &mut [f64]| -> f64 {
        g.fill(0.0);
        let b = w[dim];
        let mut loss = 0.0;
        for &r in idx {
            let row = &data.rows[r];
            let y = data.labels[r];
            let z = b + row.iter().map(|&(j, v)| w[j as usize] * v).sum::<f64>();
            loss += log_loss_term(z, y);
            let err = (sigmoid(z) - f64::from(u8::from(y))) / n;
            for &(j, v) in row {
                g[j as usize] += err * v;
            }
            g[dim] += err;
        }
        let mut reg = 0.0;
        for j in 0..dim {
            reg += w[j] * w[j];
            g[j] += l2 * w[j];
        }
        loss / n + 0.5 * l2 * reg
    };
    lbfgs(objective, vec![0.0; dim + 1], max_iter)
}

fn raw_logit(w: &[f64], row: &[(u32, f64)]) -> f64 {
    let dim = w.len() - 1;
    w[dim] + row.iter().map(|&(j, v)| w[j as usize] * v).sum::<f64>()
}

/// Platt scaling on (logit, label) pairs, with Platt's smoothed targets.
fn platt(z: &[f64], y: &[bool]) -> (f64, f64) {
    let pos = y.iter().filter(|v| **v).count() as f64;
    let neg = y.len() as f64 - pos;
    let hi = (pos + 1.0) / (pos + 2.0);
    let lo = 1.0 / (neg + 2.0);
    let n = z.len() as f64;
    let ab = lbfgs(
        |p: &[f64], g: &mut [f64]| {
            let (mut loss, mut ga, mut gb) = (0.0, 0.0, 0.0);
            for (&zi, &yi) in z.iter().zip(y) {
                let t = if yi { hi } else { lo };
                let s = p[0] * zi + p[1];
                loss += t * log_loss_term(s, true) + (1.0 - t) * log_loss_term(s, false);
                let e = sigmoid(s) - t;
                ga += e * zi;
                gb += e;
            }
            g[0] = ga / n;
            g[1] = gb / n;
            loss / n
        },
        vec![1.0, 0.0],
        100,
    );
    (ab[0], ab[1])
}

/// Stratified split of `idx` into `k` folds (seeded).
fn folds(labels: &[bool], idx: &[usize], k: usize, rng: &mut SplitMix64) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); k];
    for class in [true, false] {
        let mut c: Vec<usize> = idx.iter().copied().filter(|&i| labels[i] == class).collect();
        rng.shuffle(&mut c);
        for (n, i) in c.into_iter().enumerate() {
            out[n % k].push(i);
        }
    }
    out
}

/// Train a model for one organisation. `examples` are `(vector, converted)` pairs.
pub fn train(examples: &[(SparseVector, bool)], config: &TrainConfig) -> TrainOutcome {
    let positives = examples.iter().filter(|e| e.1).count();
    let negatives = examples.len() - positives;
    let refuse = |reason: String| TrainOutcome::Refused(Refusal { reason, positives, negatives });
    if positives < config.min_per_class || negatives < config.min_per_class {
        return refuse(format!(
            "need at least {} converted and {} lost leads, have {positives} converted and {negatives} lost",
            config.min_per_class, config.min_per_class
        ));
    }
    let k = config.folds.max(2);
    let grid: Vec<f64> = if config.l2_grid.is_empty() { vec![1e-2] } else { config.l2_grid.clone() };

    // Hold-out split, stratified.
    let mut rng = SplitMix64::new(config.seed);
    let labels: Vec<bool> = examples.iter().map(|e| e.1).collect();
    let all: Vec<usize> = (0..examples.len()).collect();
    let mut holdout = Vec::new();
    let mut training = Vec::new();
    for class in [true, false] {
        let mut c: Vec<usize> = all.iter().copied().filter(|&i| labels[i] == class).collect();
        rng.shuffle(&mut c);
        let h = ((c.len() as f64 * config.holdout_fraction).round() as usize).clamp(1, c.len() - 1);
        holdout.extend_from_slice(&c[..h]);
        training.extend_from_slice(&c[h..]);
    }
    holdout.sort_unstable();
    training.sort_unstable();

    // Compact feature space: indices present in the training part.
    let mut used: Vec<u32> = training.iter().flat_map(|&i| examples[i].0.iter().map(|p| p.0)).collect();
    used.sort_unstable();
    used.dedup();
    let compact = |x: &SparseVector| -> Vec<(u32, f64)> {
        x.iter().filter_map(|&(j, v)| used.binary_search(&j).ok().map(|c| (c as u32, f64::from(v)))).collect()
    };
    let data = Data { rows: examples.iter().map(|e| compact(&e.0)).collect(), labels, dim: used.len() };

    // Cross-validation on the training part: choose λ, collect out-of-fold logits for calibration.
    let cv = folds(&data.labels, &training, k, &mut rng);
    let mut best: Option<(f64, f64, Vec<f64>, Vec<bool>)> = None; // (loss, λ, oof logits, labels)
    for &l2 in &grid {
        let (mut z, mut y) = (Vec::new(), Vec::new());
        for f in 0..k {
            let fit_idx: Vec<usize> = (0..k).filter(|&o| o != f).flat_map(|o| cv[o].iter().copied()).collect();
            let w = fit(&data, &fit_idx, l2, config.max_iter);
            for &i in &cv[f] {
                z.push(raw_logit(&w, &data.rows[i]));
                y.push(data.labels[i]);
            }
        }
        let (a, b) = platt(&z, &y);
        let loss = z.iter().zip(&y).map(|(&zi, &yi)| log_loss_term(a * zi + b, yi)).sum::<f64>() / z.len() as f64;
        if best.as_ref().is_none_or(|bst| loss < bst.0) {
            best = Some((loss, l2, z, y));
        }
    }
    let Some((_, l2, oof_z, oof_y)) = best else {
        return refuse("cross-validation produced no predictions".to_owned());
    };
    let (platt_a, platt_b) = platt(&oof_z, &oof_y);

    // Final fit.
    let w = fit(&data, &training, l2, config.max_iter);
    let mut weights: Vec<(u32, f32)> = used
        .iter()
        .zip(&w[..data.dim])
        .filter(|(_, v)| v.abs() >= config.epsilon)
        .map(|(&j, &v)| (j, v as f32))
        .collect();
    if weights.len() > config.max_weights {
        weights.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        weights.truncate(config.max_weights);
        weights.sort_unstable_by_key(|p| p.0);
    }
    let mut model = Model {
        version: config.version,
        trained_at: config.trained_at.unwrap_or_else(Timestamp::now),
        training_size: training.len(),
        positives,
        negatives,
        holdout_size: holdout.len(),
        holdout_auc: 0.0,
        prior_holdout_auc: 0.0,
        holdout_mean_probability: 0.0,
        holdout_base_rate: 0.0,
        holdout_log_loss: 0.0,
        l2,
        intercept: w[data.dim],
        platt_a,
        platt_b,
        weights,
        names: BTreeMap::new(),
    };

    // Hold-out evaluation of the stored (pruned) model and of the prior.
    let prior = Prior::new();
    let hy: Vec<bool> = holdout.iter().map(|&i| examples[i].1).collect();
    let hp: Vec<f64> = holdout.iter().map(|&i| model.probability(&examples[i].0)).collect();
    let pp: Vec<f64> = holdout.iter().map(|&i| prior.probability(&examples[i].0)).collect();
    model.holdout_auc = auc(&hp, &hy).unwrap_or(0.5);
    model.prior_holdout_auc = auc(&pp, &hy).unwrap_or(0.5);
    let n = hy.len() as f64;
    model.holdout_mean_probability = hp.iter().sum::<f64>() / n;
    model.holdout_base_rate = hy.iter().filter(|v| **v).count() as f64 / n;
    model.holdout_log_loss =
        hp.iter().zip(&hy).map(|(&p, &y)| -(if y { p } else { 1.0 - p }).max(1e-12).ln()).sum::<f64>() / n;
    TrainOutcome::Trained(Box::new(model))
}

impl Model {
    fn weight(&self, index: u32) -> Option<f32> {
        self.weights.binary_search_by_key(&index, |p| p.0).ok().map(|i| self.weights[i].1)
    }

    /// The uncalibrated logit.
    pub fn raw_logit(&self, x: &SparseVector) -> f64 {
        self.intercept + x.iter().filter_map(|&(j, v)| self.weight(j).map(|w| f64::from(w) * f64::from(v))).sum::<f64>()
    }

    /// The calibrated probability of conversion.
    pub fn probability(&self, x: &SparseVector) -> f64 {
        sigmoid(self.platt_a * self.raw_logit(x) + self.platt_b)
    }

    /// Whether this model ranked the hold-out set better than the prior did.
    pub fn beats_prior(&self) -> bool {
        self.holdout_auc > self.prior_holdout_auc
    }

    /// The `n` hashed features of the largest weight, strongest first: the ones worth a readable name.
    pub fn strongest_hashed(&self, n: usize) -> Vec<u32> {
        let mut hashed: Vec<(u32, f32)> = self.weights.iter().copied().filter(|p| p.0 >= DENSE_LEN).collect();
        hashed.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        hashed.into_iter().take(n).map(|p| p.0).collect()
    }

    /// Keeps readable names for this model's [`NAMED_FEATURES`] strongest hashed features, from a
    /// vocabulary built over the organisation's messages; the words stay with the model and nowhere
    /// else. The other hashed features are explained together as "text features".
    pub fn name_features(&mut self, vocabulary: &Vocabulary) {
        self.names = self
            .strongest_hashed(NAMED_FEATURES)
            .into_iter()
            .filter_map(|index| vocabulary.get(index).map(|name| (index, name.to_owned())))
            .collect();
    }

    /// The readable label of a feature index: its label for dense features, its name for a named
    /// hashed one, "text features" for the others (never a hash).
    pub fn feature_label(&self, index: u32) -> String {
        if index < DENSE_LEN {
            DENSE_LABELS[index as usize].to_owned()
        } else {
            self.names.get(&index).cloned().unwrap_or_else(|| UNNAMED_TEXT.to_owned())
        }
    }

    /// Score and reasons (the eight largest contributions, the rest summed as "other features").
    /// Hashed features that share a name (a word and its character n-grams) count as one reason,
    /// and so do those without a name, as "text features".
    pub fn explain(&self, x: &SparseVector) -> Explanation {
        let a = self.platt_a;
        let mut contributions: Vec<(u32, f64)> = Vec::with_capacity(x.len() + 1);
        // Reasons of hashed features, by name; the index of each is `u32::MAX - position`.
        let mut texts: Vec<(&str, f64)> = Vec::new();
        for &(j, v) in x {
            let Some(w) = self.weight(j) else { continue };
            let contribution = a * f64::from(w) * f64::from(v);
            if j < DENSE_LEN {
                contributions.push((j, contribution));
                continue;
            }
            let name = self.names.get(&j).map_or(UNNAMED_TEXT, String::as_str);
            match texts.iter_mut().find(|t| t.0 == name) {
                Some(text) => text.1 += contribution,
                None => texts.push((name, contribution)),
            }
        }
        contributions.extend(texts.iter().enumerate().map(|(n, t)| (u32::MAX - n as u32, t.1)));
        explain_indexed(a * self.intercept + self.platt_b, &contributions, 8, |j| {
            if j < DENSE_LEN { self.feature_label(j) } else { texts[(u32::MAX - j) as usize].0.to_owned() }
        })
    }
}

/// How many of a model's strongest hashed features keep a readable name ([`Model::name_features`]).
pub const NAMED_FEATURES: usize = 64;

/// What the hashed features without a name are called, together.
const UNNAMED_TEXT: &str = "text features";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_known_values() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(auc(&[1.0, 2.0, 3.0], &[false, true, true]), Some(1.0));
        assert_eq!(auc(&[3.0, 2.0, 1.0], &[false, true, true]), Some(0.0));
        // All tied: one half.
        assert_eq!(auc(&[0.5; 4], &[true, false, true, false]), Some(0.5));
        // One tie across classes among four pairs: (1 + 1 + 0.5 + 1) / 4.
        assert_eq!(auc(&[0.2, 0.5, 0.5, 0.9], &[false, false, true, true]), Some(0.875));
        assert_eq!(auc(&[0.2, 0.5], &[true, true]), None);
        assert_eq!(auc(&[0.2], &[true, false]), None);
    }

    #[test]
    fn refuses_small_data() {
        let ex: Vec<(SparseVector, bool)> = (0..50).map(|i| (vec![(0, i as f32)], i % 5 == 0)).collect();
        match train(&ex, &TrainConfig::default()) {
            TrainOutcome::Refused(r) => {
                assert_eq!((r.positives, r.negatives), (10, 40));
                assert!(r.reason.contains("at least 30"), "{}", r.reason);
            }
            TrainOutcome::Trained(_) => panic!("should refuse"),
        }
    }

    #[test]
    fn learns_a_separable_toy_problem_deterministically() {
        let mut rng = SplitMix64::new(3);
        let ex: Vec<(SparseVector, bool)> = (0..400)
            .map(|_| {
                let y = rng.chance(0.4);
                let signal = if y { rng.next_f64() + 0.3 } else { rng.next_f64() };
                (vec![(5, signal as f32), (100 + rng.below(5) as u32, 1.0)], y)
            })
            .collect();
        let cfg = TrainConfig { trained_at: Some(Timestamp::UNIX_EPOCH), ..TrainConfig::default() };
        let m = train(&ex, &cfg).model().unwrap();
        assert!(m.holdout_auc > 0.7, "{}", m.holdout_auc);
        let again = train(&ex, &cfg).model().unwrap();
        assert_eq!(m, again);
        let json = serde_json::to_string(&m).unwrap();
        let back: Model = serde_json::from_str(&json).unwrap();
        assert_eq!(back.weights, m.weights);
        let e = m.explain(&ex[0].0);
        assert!(e.factors.iter().any(|f| f.name == "intent signals"), "{e}");
    }
}

//! Picks the next token from the logits: repeat penalty, then greedy or
//! temperature + top-k + top-p sampling, in the order Hugging Face's
//! `generate` and llama.cpp's default chain apply them.
//!
//! Pure over a logits slice and a seeded RNG: the same seed and logits give
//! the same token on every machine (ChaCha8's stream is specified, unlike
//! `StdRng`'s).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities reach p; 1 keeps all.
    pub top_p: f32,
    /// Divides positive logits (multiplies negative ones) of recent tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
}

impl SamplingParams {
    /// Every token the likeliest, with no penalty: the same reply each run.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Chooses a token. `history` is every token so far (prompt and reply);
    /// the repeat penalty looks at its tail.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            apply_repeat_penalty(logits, &history[start..], p.repeat_penalty);
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let candidates = candidates(logits, p.temperature, p.top_k, p.top_p);
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, prob) in &candidates {
            if r < prob {
                return id;
            }
            r -= prob;
        }
        // Rounding can leave r a hair above the last probability.
        candidates.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// The first index of the largest logit (ties go to the lower id, as in
/// `torch.argmax`). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Each distinct recent token is penalised once, however often it appeared
/// (as in transformers' `RepetitionPenaltyLogitsProcessor`).
fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &id in recent {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if seen.insert(id) {
            *l = if *l >= 0.0 {
                *l / penalty
            } else {
                *l * penalty
            };
        }
    }
}

/// The tokens left after temperature, top-k and top-p, with unnormalised
/// probabilities, most likely first.
fn candidates(logits: &[f32], temperature: f32, top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 && top_k < c.len() {
        c.truncate(top_k);
    }
    let max = c.first().map_or(0.0, |x| x.1);
    for x in &mut c {
        x.1 = (x.1 - max).exp();
    }
    if top_p < 1.0 {
        let total: f32 = c.iter().map(|x| x.1).sum();
        let mut cumulative = 0.0;
        let mut keep = c.len();
        for (i, x) in c.iter().enumerate() {
            cumulative += x.1 / total;
            if cumulative >= top_p {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0), 0);
        assert_eq!(s.sample(&mut [0.1, 2.0, 2.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }

    #[test]
    fn repeat_penalty_shrinks_positive_and_grows_negative_logits_once() {
        let mut logits = [4.0, -2.0, 1.0];
        apply_repeat_penalty(&mut logits, &[0, 1, 0, 0, 7], 2.0);
        assert_eq!(logits, [2.0, -4.0, 1.0]);
    }

    #[test]
    fn repeat_penalty_window_only_sees_the_tail() {
        let mut p = params(0.0);
        p.repeat_penalty = 10.0;
        p.repeat_last_n = 1;
        let mut s = Sampler::new(p, 0);
        // Token 0 is out of the window, token 1 is penalised below token 2.
        assert_eq!(s.sample(&mut [3.0, 2.5, 1.0], &[0, 1]), 0);
        assert_eq!(s.sample(&mut [1.0, 2.5, 2.0], &[0, 1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = params(1.5);
        p.top_k = 1;
        let mut s = Sampler::new(p, 42);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.9, 0.2], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities ~ 0.64, 0.24, 0.09, 0.03.
        let logits = [3.0, 2.0, 1.0, 0.0];
        assert_eq!(candidates(&logits, 1.0, 0, 0.5).len(), 1);
        assert_eq!(candidates(&logits, 1.0, 0, 0.8).len(), 2);
        assert_eq!(candidates(&logits, 1.0, 0, 1.0).len(), 4);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0), seed);
            (0..30)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(params(1.0), 1);
        // p(1) = e / (1 + e) ~ 0.731
        let hits = (0..4000)
            .filter(|_| s.sample(&mut [0.0, 1.0], &[]) == 1)
            .count();
        assert!((2800..3050).contains(&hits), "{hits}");
    }

    #[test]
    fn infinite_logits_are_never_sampled() {
        let mut s = Sampler::new(params(1.0), 3);
        for _ in 0..50 {
            assert_eq!(
                s.sample(&mut [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], &[]),
                1
            );
        }
    }
}

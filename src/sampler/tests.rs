//! The sampler's behaviour: greedy choice, top-k, top-p, frequencies, seeds, penalties.

use super::*;

fn cfg(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k,
        top_p,
        seed,
        ..SamplerConfig::default()
    }
}

fn counts(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut c = vec![0usize; logits.len()];
    for _ in 0..draws {
        c[s.sample(logits) as usize] += 1;
    }
    c
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|&p| p.ln() as f32).collect()
}

#[test]
fn greedy_matches_argmax() {
    let mut s = Sampler::new(cfg(0.0, 0, 1.0, 1));
    let cases: Vec<Vec<f32>> = vec![
        vec![0.1, 0.9, 0.3],
        vec![2.0, 2.0, 1.0],
        vec![f32::NAN, 0.5, 0.5, f32::NAN],
        vec![f32::NAN, f32::NAN, f32::NAN],
        vec![f32::NEG_INFINITY; 4],
        vec![-3.0, f32::NAN, -1.0, -1.0],
    ];
    let expected = [1, 0, 1, 0, 0, 2];
    for (l, &e) in cases.iter().zip(&expected) {
        assert_eq!(s.sample(l), e, "logits {l:?}");
        assert_eq!(argmax(l), e);
    }
    // Deterministic regardless of seed.
    let big: Vec<f32> = (0..65536).map(|i| ((i * 7919) % 65521) as f32).collect();
    let a = argmax(&big);
    for seed in 0..5 {
        let mut s = Sampler::new(cfg(0.0, 0, 0.5, seed));
        assert_eq!(s.sample(&big), a);
    }
}

#[test]
fn sample_does_not_modify_logits() {
    let logits = vec![0.5f32, f32::NAN, 2.0, -1.0, 1.0];
    let copy = logits.clone();
    let mut c = cfg(0.8, 3, 0.9, 3);
    c.presence_penalty = 1.0;
    c.frequency_penalty = 0.5;
    let mut s = Sampler::new(c);
    s.accept(2);
    for _ in 0..10 {
        let t = s.sample(&logits);
        s.accept(t);
    }
    assert_eq!(format!("{logits:?}"), format!("{copy:?}"));
}

#[test]
fn top_k_one_is_argmax() {
    let mut logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.01).collect();
    logits[500] = 5.0;
    logits[700] = 5.0;
    for &t in &[0.1f32, 1.0, 3.0, 100.0] {
        let mut s = Sampler::new(cfg(t, 1, 1.0, 42));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 500);
        }
    }
}

#[test]
fn top_k_support() {
    // Highest three: ids 7 (3.0), 2 (2.5), 9 (2.4).
    let logits = [0.0f32, 1.0, 2.5, -1.0, 0.5, 2.3, 1.9, 3.0, 0.2, 2.4];
    let mut s = Sampler::new(cfg(1.0, 3, 1.0, 7));
    let c = counts(&mut s, &logits, 2000);
    for (id, &n) in c.iter().enumerate() {
        if [7, 2, 9].contains(&id) {
            assert!(n > 0, "id {id} never drawn: {c:?}");
        } else {
            assert_eq!(n, 0, "id {id} outside top-3 drawn: {c:?}");
        }
    }
}

#[test]
fn top_k_boundary_ties_go_to_lower_ids() {
    // ids 1, 3, 4 tie at 1.0 behind id 0; top_k = 3 keeps 0, 1, 3.
    let logits = [2.0f32, 1.0, 0.0, 1.0, 1.0];
    let mut s = Sampler::new(cfg(1.0, 3, 1.0, 11));
    let c = counts(&mut s, &logits, 3000);
    assert!(c[0] > 0 && c[1] > 0 && c[3] > 0, "{c:?}");
    assert_eq!(c[2] + c[4], 0, "{c:?}");
}

#[test]
fn top_p_support() {
    let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    let mut s = Sampler::new(cfg(1.0, 0, 0.7, 5));
    let c = counts(&mut s, &logits, 3000);
    assert!(c[0] > 0 && c[1] > 0, "{c:?}");
    assert_eq!(c[2] + c[3], 0, "{c:?}");
    // Renormalised 0.5 : 0.3 -> 0.625 of the mass on id 0.
    let f0 = c[0] as f64 / 3000.0;
    assert!((f0 - 0.625).abs() < 0.04, "{c:?}");

    let mut s = Sampler::new(cfg(1.0, 0, 0.85, 5));
    let c = counts(&mut s, &logits, 3000);
    assert!(c[0] > 0 && c[1] > 0 && c[2] > 0, "{c:?}");
    assert_eq!(c[3], 0, "{c:?}");

    // Tiny top_p always keeps at least the best token.
    let mut s = Sampler::new(cfg(1.0, 0, 1e-6, 5));
    assert!(counts(&mut s, &logits, 500)[0] == 500);
}

#[test]
fn top_k_then_top_p() {
    // After top-3 the probabilities renormalise to 0.526, 0.316, 0.158.
    let logits = logits_of(&[0.05, 0.5, 0.15, 0.3]);
    let mut s = Sampler::new(cfg(1.0, 3, 0.7, 8));
    let c = counts(&mut s, &logits, 2000);
    assert!(c[1] > 0 && c[3] > 0, "{c:?}");
    assert_eq!(c[0] + c[2], 0, "{c:?}");
    let mut s = Sampler::new(cfg(1.0, 3, 0.5, 8));
    assert_eq!(counts(&mut s, &logits, 500)[1], 500);
    let mut s = Sampler::new(cfg(1.0, 3, 0.9, 8));
    let c = counts(&mut s, &logits, 2000);
    assert!(c[1] > 0 && c[2] > 0 && c[3] > 0 && c[0] == 0, "{c:?}");
}

#[test]
fn top_p_large_vocab_flat_and_peaked() {
    // Flat-ish distribution over 65536: the nucleus needs many rounds of growth.
    let n = 65536;
    let logits: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32) * 0.5).collect();
    let mut s = Sampler::new(cfg(1.0, 0, 0.5, 9));
    // Compute the true nucleus threshold: keep the highest ids until mass >= 0.5.
    let mut probs: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    let mut cum = 0.0;
    let mut lowest_kept = n;
    for i in (0..n).rev() {
        cum += probs[i];
        lowest_kept = i;
        if cum >= 0.5 {
            break;
        }
    }
    for _ in 0..300 {
        let t = s.sample(&logits) as usize;
        // Allow one id of slack for f32 vs f64 rounding at the boundary.
        assert!(
            t + 1 >= lowest_kept,
            "token {t} below nucleus start {lowest_kept}"
        );
    }

    // Peaked: one dominant token plus noise.
    let mut logits = vec![0.0f32; n];
    logits[12345] = 20.0;
    let mut s = Sampler::new(cfg(1.0, 0, 0.9, 9));
    for _ in 0..100 {
        assert_eq!(s.sample(&logits), 12345);
    }
}

/// Reference nucleus by full sort (same f32 probabilities as the sampler).
fn reference_nucleus(logits: &[f32], temp: f32, top_p: f64) -> Vec<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f32> = logits
        .iter()
        .map(|&x| exp_nonpos((x - max) * (1.0 / temp)))
        .collect();
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| rank(&probs, a, b));
    let mut cum = 0.0;
    let mut out = Vec::new();
    for t in ids {
        out.push(t);
        cum += probs[t as usize] as f64;
        if cum >= top_p * total {
            break;
        }
    }
    out
}

#[test]
fn top_p_matches_full_sort_reference() {
    // Many exact ties, so the boundary tie-break (lower ids first) matters.
    let n = 4096;
    let logits: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 * 0.3).collect();
    for &(temp, top_p, seed) in &[(0.7f32, 0.2f32, 1u64), (1.0, 0.05, 2), (0.3, 0.5, 3)] {
        let reference = reference_nucleus(&logits, temp, top_p as f64);
        let mut s = Sampler::new(cfg(temp, 0, top_p, seed));
        let mut hits = vec![0usize; n];
        for _ in 0..4000 {
            hits[s.sample(&logits) as usize] += 1;
        }
        for (t, &h) in hits.iter().enumerate() {
            if h > 0 {
                assert!(reference.contains(&(t as u32)), "id {t} outside nucleus");
            }
        }
        if reference.len() <= 40 {
            for &t in &reference {
                assert!(hits[t as usize] > 0, "nucleus id {t} never drawn");
            }
        }
    }
    // Smooth logits: every draw lies in the reference nucleus.
    let logits: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 4.0).collect();
    let reference = reference_nucleus(&logits, 0.9, 0.6);
    let mut s = Sampler::new(cfg(0.9, 0, 0.6, 4));
    for _ in 0..1000 {
        assert!(reference.contains(&s.sample(&logits)));
    }
}

#[test]
fn frequencies_match_softmax() {
    let logits = [0.3f32, -0.5, 1.2, 0.0, -2.0, 0.8];
    for &(temp, seed) in &[(1.0f32, 123u64), (0.7, 321), (1.8, 999)] {
        let mut s = Sampler::new(cfg(temp, 0, 1.0, seed));
        let draws = 20000;
        let c = counts(&mut s, &logits, draws);
        let w: Vec<f64> = logits.iter().map(|&x| ((x / temp) as f64).exp()).collect();
        let z: f64 = w.iter().sum();
        let chi2: f64 = c
            .iter()
            .zip(&w)
            .map(|(&o, &wi)| {
                let e = wi / z * draws as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        // 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5.
        assert!(chi2 < 30.0, "temp {temp}: chi2 {chi2}, counts {c:?}");
    }
}

#[test]
fn frequencies_match_softmax_large_vocab() {
    // 1200 ids in groups of 300 (spanning the 256-id partial sums), with
    // whole -inf stretches that must never be drawn.
    let n = 1200;
    let logits: Vec<f32> = (0..n)
        .map(|i| {
            if (256..512).contains(&i) || i % 7 == 3 {
                f32::NEG_INFINITY
            } else {
                (i / 300) as f32 * 0.5
            }
        })
        .collect();
    let mut s = Sampler::new(cfg(1.0, 0, 1.0, 31337));
    let draws = 20000;
    let mut groups = [0usize; 4];
    for _ in 0..draws {
        let t = s.sample(&logits) as usize;
        assert!(logits[t].is_finite(), "drew -inf id {t}");
        groups[t / 300] += 1;
    }
    let mut w = [0.0f64; 4];
    for (i, &x) in logits.iter().enumerate() {
        w[i / 300] += (x as f64).exp();
    }
    let z: f64 = w.iter().sum();
    let chi2: f64 = groups
        .iter()
        .zip(&w)
        .map(|(&o, &wi)| {
            let e = wi / z * draws as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    // 3 degrees of freedom: P(chi2 > 25) ~ 1.6e-5.
    assert!(chi2 < 25.0, "chi2 {chi2}, groups {groups:?}");
}

#[test]
fn frequencies_match_softmax_with_top_k() {
    // top_k = 4 of 6 at temperature 0.5: renormalised softmax over the survivors.
    let logits = [0.3f32, -0.5, 1.2, 0.0, -2.0, 0.8];
    let kept = [0usize, 2, 3, 5];
    let mut s = Sampler::new(cfg(0.5, 4, 1.0, 77));
    let draws = 20000;
    let c = counts(&mut s, &logits, draws);
    assert_eq!(c[1] + c[4], 0);
    let w: Vec<f64> = kept
        .iter()
        .map(|&i| ((logits[i] / 0.5) as f64).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let chi2: f64 = kept
        .iter()
        .zip(&w)
        .map(|(&i, &wi)| {
            let e = wi / z * draws as f64;
            (c[i] as f64 - e).powi(2) / e
        })
        .sum();
    assert!(chi2 < 25.0, "chi2 {chi2}, counts {c:?}");
}

#[test]
fn seeds_reproduce_and_differ() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 13) % 17) as f32 * 0.1).collect();
    let run = |seed: u64| {
        let mut s = Sampler::new(cfg(1.0, 50, 0.95, seed));
        (0..100).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
    };
    assert_eq!(run(1234), run(1234));
    assert_eq!(run(0), run(0));
    assert_ne!(run(1234), run(1235));
    assert_ne!(run(0), run(1));
}

#[test]
fn presence_penalty_blocks_repeats_greedily() {
    let logits = [1.0f32, 3.0, 2.0, 2.5];
    let mut c = cfg(0.0, 0, 1.0, 0);
    c.presence_penalty = 10.0;
    let mut s = Sampler::new(c);
    let mut out = Vec::new();
    for _ in 0..4 {
        let t = s.sample(&logits);
        s.accept(t);
        out.push(t);
    }
    // Every token gets the same penalty once seen, so greedy walks down the ranks.
    assert_eq!(out, vec![1, 3, 2, 0]);
}

#[test]
fn frequency_penalty_counts_and_decay() {
    let logits = [5.0f32, 4.0];
    let mut c = cfg(0.0, 0, 1.0, 0);
    c.frequency_penalty = 0.6;
    c.penalty_decay = 1.0;
    let mut s = Sampler::new(c.clone());
    s.accept(0);
    assert_eq!(s.sample(&logits), 0); // 5 - 0.6 = 4.4 > 4
    s.accept(0);
    assert_eq!(s.sample(&logits), 1); // 5 - 1.2 = 3.8 < 4

    // Decay: counts are multiplied before adding, so after two accepts
    // count = 1 * 0.5 + 1 = 1.5 -> 5 - 0.9 = 4.1 > 4.
    c.penalty_decay = 0.5;
    let mut s = Sampler::new(c);
    s.accept(0);
    s.accept(0);
    assert_eq!(s.sample(&logits), 0);
    // An accept of another token decays id 0 to 0.75 -> 5 - 0.45.
    s.accept(1); // id 1: 4 - 0.6
    assert_eq!(s.sample(&logits), 0);

    // Penalties on ids beyond the vocabulary are ignored.
    let mut s = Sampler::new(SamplerConfig {
        presence_penalty: 1.0,
        temperature: 0.0,
        ..SamplerConfig::default()
    });
    s.accept(1_000_000);
    assert_eq!(s.sample(&logits), 0);
    s.reset_penalties();
    s.accept(0);
    s.reset_penalties();
    assert_eq!(s.sample(&logits), 0);
}

#[test]
fn penalties_lower_sampled_frequency() {
    let logits = [1.0f32, 1.0, 1.0, 1.0];
    let mut c = cfg(1.0, 0, 1.0, 2024);
    let mut plain = Sampler::new(c.clone());
    c.presence_penalty = 1.5;
    let mut pen = Sampler::new(c);
    plain.accept(2);
    pen.accept(2);
    let a = counts(&mut plain, &logits, 4000)[2];
    let b = counts(&mut pen, &logits, 4000)[2];
    // Expected 1000 vs 4000 * e^-1.5 / (3 + e^-1.5) ~ 276.
    assert!(a > 850 && b < 400, "plain {a}, penalised {b}");
}

#[test]
fn degenerate_inputs() {
    let mut s = Sampler::new(cfg(1.0, 0, 0.9, 1));
    assert_eq!(s.sample(&[]), 0);
    assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NAN]), 0);
    // Only finite logit among NaN/-inf must be chosen.
    for _ in 0..50 {
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY, -50.0, f32::NAN]), 2);
    }
    // +inf wins over finite values.
    for _ in 0..50 {
        let t = s.sample(&[0.0, f32::INFINITY, 1e30, f32::INFINITY]);
        assert!(t == 1 || t == 3);
    }
    // Tiny temperature acts greedily.
    let mut s = Sampler::new(cfg(1e-6, 0, 1.0, 1));
    for _ in 0..50 {
        assert_eq!(s.sample(&[0.0, 1.0, 0.999]), 1);
    }
}

#[test]
fn validate_rejects_bad_values() {
    assert!(SamplerConfig::default().validate().is_ok());
    assert!(cfg(0.0, 5, 0.5, 0).validate().is_ok());
    let bad: Vec<(SamplerConfig, &str)> = vec![
        (cfg(-0.1, 0, 1.0, 0), "--temperature"),
        (cfg(f32::NAN, 0, 1.0, 0), "--temperature"),
        (cfg(f32::INFINITY, 0, 1.0, 0), "--temperature"),
        (cfg(1.0, 0, 0.0, 0), "--top-p"),
        (cfg(1.0, 0, 1.01, 0), "--top-p"),
        (cfg(1.0, 0, f32::NAN, 0), "--top-p"),
        (
            SamplerConfig {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
            "--presence-penalty",
        ),
        (
            SamplerConfig {
                frequency_penalty: f32::INFINITY,
                ..Default::default()
            },
            "--frequency-penalty",
        ),
        (
            SamplerConfig {
                penalty_decay: 0.0,
                ..Default::default()
            },
            "--penalty-decay",
        ),
        (
            SamplerConfig {
                penalty_decay: 1.5,
                ..Default::default()
            },
            "--penalty-decay",
        ),
    ];
    for (c, flag) in bad {
        let e = c.validate().expect_err(flag).to_string();
        assert!(e.contains(flag), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // The field as the struct (and the server's API) spells it; the reason without it.
        let (field, why) = c.invalid_field().expect(flag);
        assert_eq!(format!("--{}", field.replace('_', "-")), flag);
        assert_eq!(e, format!("{flag} {why}"));
    }
    // Signs are kept as they are (a minus sign is no flag's hyphen).
    let (field, why) = cfg(-1.0, 0, 1.0, 0).invalid_field().unwrap();
    assert_eq!(field, "temperature");
    assert_eq!(why, "must be a finite number >= 0 (got -1)");
    assert!(SamplerConfig::default().invalid_field().is_none());
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_best() {
    // Probabilities at T = 1: ln-ratios to the best are 0, -0.5, -1.5, -3.
    let logits = [3.0f32, 2.5, 1.5, 0.0];
    // min-p 0.3: ln 0.3 = -1.20, so ids 0 and 1 survive.
    let mut s = Sampler::new(SamplerConfig {
        min_p: 0.3,
        seed: 7,
        ..SamplerConfig::default()
    });
    let c = counts(&mut s, &logits, 4000);
    assert_eq!((c[2], c[3]), (0, 0), "{c:?}");
    assert!(c[0] > 0 && c[1] > 0, "{c:?}");
    // Renormalised over the survivors: p1/p0 = e^-0.5 ≈ 0.61.
    let ratio = c[1] as f64 / c[0] as f64;
    assert!((ratio - (-0.5f64).exp()).abs() < 0.1, "{ratio}");
    // At T = 2 the same fraction keeps more: the cut is 2·ln 0.3 = -2.41 below the best.
    let mut s = Sampler::new(SamplerConfig {
        min_p: 0.3,
        temperature: 2.0,
        seed: 7,
        ..SamplerConfig::default()
    });
    let c = counts(&mut s, &logits, 4000);
    assert!(c[2] > 0 && c[3] == 0, "{c:?}");
    // min-p 1 keeps only the best (and its ties).
    let mut s = Sampler::new(SamplerConfig {
        min_p: 1.0,
        ..SamplerConfig::default()
    });
    let c = counts(&mut s, &[1.0, 4.0, 4.0, 2.0], 400);
    assert_eq!((c[0], c[3]), (0, 0), "{c:?}");
    assert!(c[1] > 0 && c[2] > 0, "{c:?}");
    // min-p 0 changes nothing: the same draws as without it.
    let mut a = Sampler::new(cfg(1.0, 0, 1.0, 3));
    let mut b = Sampler::new(SamplerConfig {
        min_p: 0.0,
        ..cfg(1.0, 0, 1.0, 3)
    });
    for _ in 0..50 {
        assert_eq!(a.sample(&logits), b.sample(&logits));
    }
}

#[test]
fn logit_bias_shifts_and_bans_tokens() {
    let logits = [2.0f32, 1.0, 0.0];
    // Greedy: +5 on id 2 makes it the best; -inf on id 0 bans it.
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.0,
        logit_bias: vec![(2, 5.0)],
        ..SamplerConfig::default()
    });
    assert_eq!(s.sample(&logits), 2);
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.0,
        logit_bias: vec![(0, f32::NEG_INFINITY)],
        ..SamplerConfig::default()
    });
    assert_eq!(s.sample(&logits), 1);
    // Sampling: a banned token is never drawn; entries for one id add up.
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(0, f32::NEG_INFINITY), (2, 0.5), (2, 0.5)],
        seed: 1,
        ..SamplerConfig::default()
    });
    let c = counts(&mut s, &logits, 2000);
    assert_eq!(c[0], 0, "{c:?}");
    // Ids 1 and 2 now have equal logits (1.0 each): about half each.
    assert!((c[1] as f64 / 2000.0 - 0.5).abs() < 0.06, "{c:?}");
    // Ids past the end are ignored by the sampler and refused by validate_vocab.
    let cfg_far = SamplerConfig {
        temperature: 0.0,
        logit_bias: vec![(99, 100.0)],
        ..SamplerConfig::default()
    };
    assert_eq!(Sampler::new(cfg_far.clone()).sample(&logits), 0);
    let e = cfg_far.validate_vocab(3).unwrap_err().to_string();
    assert!(e.contains("--logit-bias 99"), "{e}");
    assert!(cfg_far.validate_vocab(100).is_ok());
    // Every token banned (once each, or some twice) leaves nothing to sample: refused.
    let ban = |ids: &[u32]| SamplerConfig {
        logit_bias: ids.iter().map(|&i| (i, f32::NEG_INFINITY)).collect(),
        ..SamplerConfig::default()
    };
    let e = ban(&[2, 0, 1]).validate_vocab(3).unwrap_err().to_string();
    assert!(e.contains("bans every token"), "{e}");
    assert!(ban(&[0, 0, 1]).validate_vocab(3).is_ok());
    assert!(ban(&[0, 1, 1, 2]).validate_vocab(3).is_err());
    assert!(ban(&[0, 1, 2]).validate_vocab(4).is_ok());
}

#[test]
fn logit_bias_and_min_p_flags_parse_and_validate() {
    assert_eq!(parse_logit_bias("11=2.5").unwrap(), (11, 2.5));
    assert_eq!(
        parse_logit_bias(" 0 = -inf").unwrap(),
        (0, f32::NEG_INFINITY)
    );
    assert_eq!(parse_logit_bias("3=-1").unwrap(), (3, -1.0));
    for bad in ["11", "x=1", "-1=2", "1=", "1=abc", "1=NaN"] {
        assert!(parse_logit_bias(bad).is_err(), "{bad}");
    }
    for (min_p, ok) in [
        (0.0, true),
        (0.05, true),
        (1.0, true),
        (-0.1, false),
        (1.5, false),
    ] {
        let c = SamplerConfig {
            min_p,
            ..SamplerConfig::default()
        };
        assert_eq!(c.validate().is_ok(), ok, "{min_p}");
        if !ok {
            assert!(c.validate().unwrap_err().to_string().contains("--min-p"));
        }
    }
    let nan = SamplerConfig {
        min_p: f32::NAN,
        ..SamplerConfig::default()
    };
    assert!(nan.validate().is_err());
}

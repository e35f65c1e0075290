//! Small-sample statistics for the demo's comparison over seeds: the mean of paired differences
//! with its 95% Student-t interval, and the sentence that says what it supports.

/// Two-sided 95% quantiles of Student's t, t(0.975, df) for df = 1..=30 (computed with mpmath
/// from the regularized incomplete beta function, 30 digits, rounded to 6 decimals).
const T975: [f64; 30] = [
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
];

/// t(0.975, df): the table up to 30 degrees of freedom, then the Cornish-Fisher expansion around
/// the normal quantile (within 1e-5 of the exact value from df 31 on).
pub fn t975(df: usize) -> f64 {
    assert!(df >= 1, "a t quantile needs at least one degree of freedom");
    if df <= T975.len() {
        return T975[df - 1];
    }
    let z: f64 = 1.959_963_984_540_054;
    let n = df as f64;
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * n)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * n * n)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * n * n * n)
}

/// A mean with its 95% interval `mean ± half_width` over `n` paired observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub half_width: f64,
    pub n: usize,
}

impl Interval {
    /// Whether the interval leaves out zero: the data support a difference.
    pub fn excludes_zero(&self) -> bool {
        self.mean.abs() > self.half_width
    }
}

/// Mean and sample standard deviation (n − 1; 0 for one value); `None` for no values.
pub fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Some((mean, var.sqrt()))
}

/// The mean of `diffs` (one per seed, e.g. SPIN − continued SFT) with its 95% t-interval
/// (sample standard deviation, n − 1 degrees of freedom); `None` under two observations.
pub fn paired_interval(diffs: &[f64]) -> Option<Interval> {
    let n = diffs.len();
    if n < 2 {
        return None;
    }
    let (mean, sd) = mean_sd(diffs)?;
    Some(Interval {
        mean,
        half_width: t975(n - 1) * sd / (n as f64).sqrt(),
        n,
    })
}

/// One sentence on what an interval of differences `a − b` (in points) supports.
pub fn verdict(a: &str, b: &str, i: &Interval) -> String {
    let over = format!("95% interval over {} seeds", i.n);
    if !i.excludes_zero() {
        format!(
            "no significant difference between {a} and {b} ({a} − {b} = {:+.1} ± {:.1} points, \
             {over})",
            i.mean, i.half_width
        )
    } else if i.mean > 0.0 {
        format!(
            "{a} beats {b} by {:.1} ± {:.1} points ({over})",
            i.mean, i.half_width
        )
    } else {
        format!(
            "{b} beats {a} by {:.1} ± {:.1} points ({over})",
            -i.mean, i.half_width
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_mpmath() {
        // Exact values from mpmath (findroot on the t CDF via the regularized incomplete beta).
        for (df, want) in [
            (1, 12.706204736),
            (4, 2.776445105),
            (30, 2.042272456),
            (40, 2.021075390),
            (60, 2.000297822),
            (120, 1.979930405),
            (1000, 1.962339081),
        ] {
            assert!(
                (t975(df) - want).abs() < 1e-5,
                "df {df}: {} vs {want}",
                t975(df)
            );
        }
    }

    #[test]
    fn paired_interval_of_a_known_sample() {
        // 1..5: mean 3, sample sd √2.5, se √0.5; half-width t(0.975, 4) · √0.5.
        let i = paired_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(i.n, 5);
        assert!((i.mean - 3.0).abs() < 1e-12);
        assert!((i.half_width - 2.776445105 * 0.5f64.sqrt()).abs() < 1e-6);
        assert!(i.excludes_zero());
        assert!(paired_interval(&[1.0]).is_none());
        let flat = paired_interval(&[1.0, -1.0, 0.5, -0.5]).unwrap();
        assert!(!flat.excludes_zero());
        assert!(verdict("SPIN", "SFT", &flat).starts_with("no significant difference"));
        assert!(verdict("SPIN", "SFT", &i).starts_with("SPIN beats SFT by 3.0 ± 2.0 points"));
    }
}

//! The measures on classifier outputs and pixels: the Fréchet distance (FID's formula, Heusel
//! et al. 2017), confidence and the spread of predicted classes, and nearest-neighbour distances.

use nalgebra::DMatrix;

use crate::data::Dataset;

/// Mean and covariance of feature rows.
fn moments(x: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.len() as f64, x[0].len());
    let mut mu = vec![0.0; d];
    for row in x {
        for (m, v) in mu.iter_mut().zip(row) {
            *m += *v as f64 / n;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x {
        let c: Vec<f64> = row.iter().zip(&mu).map(|(v, m)| *v as f64 - m).collect();
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j] / (n - 1.0);
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    (mu, cov)
}

/// Eigenvalues and eigenvectors (columns, row-major) of a symmetric d×d matrix (row-major),
/// by nalgebra's symmetric QR algorithm.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let eigen = DMatrix::from_row_slice(d, d, a).symmetric_eigen();
    let v = eigen.eigenvectors.transpose(); // column-major storage of Vᵀ = row-major V
    (eigen.eigenvalues.as_slice().to_vec(), v.as_slice().to_vec())
}

/// ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), with Tr((Σ₁Σ₂)^½) = Σ √λ(Σ₁^½ Σ₂ Σ₁^½).
pub fn frechet_distance(x: &[Vec<f32>], y: &[Vec<f32>]) -> f64 {
    let d = x[0].len();
    let ((m1, s1), (m2, s2)) = (moments(x), moments(y));
    let (s1, s2) = (DMatrix::from_row_slice(d, d, &s1), DMatrix::from_row_slice(d, d, &s2));
    // Σ₁^½ = V diag(√w) Vᵀ
    let e = s1.clone().symmetric_eigen();
    let root = &e.eigenvectors
        * DMatrix::from_diagonal(&e.eigenvalues.map(|w| w.max(0.0).sqrt()))
        * e.eigenvectors.transpose();
    let lambda = (&root * &s2 * &root).symmetric_eigenvalues();
    let tr_sqrt: f64 = lambda.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean: f64 = m1.iter().zip(&m2).map(|(a, b)| (a - b).powi(2)).sum();
    mean + s1.trace() + s2.trace() - 2.0 * tr_sqrt
}

/// Whether the classifier gives an image's top class a probability above 0.9.
fn confident(p: &[f32]) -> bool {
    p.iter().copied().fold(0.0, f32::max) > 0.9
}

/// Share of images classified with confidence above 0.9.
pub fn confident_share(probs: &[Vec<f32>]) -> f64 {
    probs.iter().filter(|p| confident(p)).count() as f64 / probs.len() as f64
}

/// How many images the classifier puts in each class.
pub fn class_counts(probs: &[Vec<f32>]) -> [usize; 10] {
    let mut counts = [0usize; 10];
    for p in probs {
        counts[argmax(p)] += 1;
    }
    counts
}

/// Per predicted class, the share of its images classified with confidence above 0.9: which
/// digits a model draws ambiguously (0 for a class it never draws).
pub fn confident_share_by_class(probs: &[Vec<f32>]) -> [f64; 10] {
    let mut sure = [0usize; 10];
    for p in probs.iter().filter(|p| confident(p)) {
        sure[argmax(p)] += 1;
    }
    let counts = class_counts(probs);
    // Three decimals are all a report of 1,000 images can tell.
    std::array::from_fn(|k| {
        if counts[k] == 0 { 0.0 } else { (1000.0 * sure[k] as f64 / counts[k] as f64).round() / 1000.0 }
    })
}

/// Entropy in bits of the histogram of predicted classes (log2 10 ≈ 3.32 when balanced).
pub fn class_entropy(probs: &[Vec<f32>]) -> f64 {
    let n = probs.len() as f64;
    class_counts(probs).iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum()
}

/// L2 distance (in [−1, 1] pixel units) from each image to its nearest neighbour in `pool`.
pub fn nearest_distances(images: &Dataset, pool: &Dataset) -> Vec<f64> {
    (0..images.len())
        .map(|i| {
            let a = images.image(i);
            (0..pool.len())
                .map(|j| a.iter().zip(pool.image(j)).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>())
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .collect()
}

pub(super) fn quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| (v[((v.len() - 1) as f64 * p).round() as usize] * 1000.0).round() / 1000.0;
    serde_json::json!({"min": q(0.0), "p01": q(0.01), "median": q(0.5), "max": q(1.0)})
}

pub(super) fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

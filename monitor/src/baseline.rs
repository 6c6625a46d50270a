//! The training-data baseline a model version is compared against (`baseline.json`).
//!
//! Schema version 1 (see also `monitor/BASELINE.md`):
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "model": "breast-cancer",
//!   "version": 2,
//!   "rows": 455,
//!   "features": [
//!     {"name": "mean radius", "tensor": "input", "index": 0, "kind": "numeric",
//!      "edges": [11.7, 12.3, ...], "proportions": [0.1, ...], "nan_proportion": 0.0}
//!   ],
//!   "outputs": [
//!     {"name": "label", "tensor": "label", "index": 0, "kind": "categorical",
//!      "categories": {"0": 0.37, "1": 0.63}, "other": 0.0, "nan_proportion": 0.0}
//!   ]
//! }
//! ```
//!
//! `features` are elements of input tensors, `outputs` elements of output tensors; `index` is the
//! element within the tensor's row. A numeric column has `edges.len() + 1` bins, bin `i` being
//! `(edges[i-1], edges[i]]` with the outer bins open-ended, so values outside the training range
//! still land somewhere. Proportions are over all rows, NaN included:
//! `sum(proportions) + nan_proportion == 1` (and `sum(categories) + other + nan_proportion == 1`).
//! `model` and `version` are informational: a baseline may be reused by a retrained version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::MonitorError;
use crate::record::FeatureValue;

/// The `schema_version` this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Default number of bins of a numeric column (deciles).
pub const DEFAULT_BINS: usize = 10;
/// Categorical columns keep at most this many categories (the most frequent); the rest are
/// "other", which bounds the bins (and Prometheus series) of high-cardinality columns.
pub const MAX_CATEGORIES: usize = 50;
/// Most bin edges a numeric column may have: each bin is a window counter and a Prometheus series.
pub const MAX_EDGES: usize = 256;
/// How far proportions may sum from 1 (hand-written or rounded baselines stay loadable).
const SUM_TOLERANCE: f64 = 1e-3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub schema_version: u32,
    pub model: String,
    pub version: u64,
    /// Training rows the baseline was computed from.
    pub rows: u64,
    pub features: Vec<BaselineColumn>,
    pub outputs: Vec<BaselineColumn>,
    /// Calibration map of a binary classifier's positive-class probability, for estimated
    /// accuracy without labels (`keel baseline --label-column`); absent in older baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::Calibration>,
}

/// One monitored element: where it is in the record and how it was distributed in training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineColumn {
    pub name: String,
    pub tensor: String,
    pub index: usize,
    #[serde(flatten)]
    pub distribution: Distribution,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    Numeric {
        /// Inner cut points, strictly increasing.
        edges: Vec<f64>,
        /// `edges.len() + 1` proportions, one per bin.
        proportions: Vec<f64>,
        nan_proportion: f64,
        /// Smallest finite training value: served values below it are out of range, and it bounds
        /// the first bin for the Wasserstein distance. Absent in older baselines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Largest finite training value (see `min`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    Categorical {
        categories: BTreeMap<String, f64>,
        /// Values that are none of `categories`.
        other: f64,
        nan_proportion: f64,
    },
}

/// How a column is binned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Numeric,
    Categorical,
}

/// Training values of one column, the input of [`Baseline::compute`].
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub tensor: String,
    pub index: usize,
    /// `None` infers: all numbers -> numeric, any string -> categorical. Force `Categorical` for
    /// integer labels (a classifier's label output) so each label is its own bin.
    pub kind: Option<Kind>,
    pub values: Vec<FeatureValue>,
}

impl Baseline {
    /// Computes a baseline from training columns, all of the same length. Numeric columns get
    /// `bins` quantile bins (numpy's default "linear" quantiles, duplicate edges removed).
    pub fn compute(
        model: &str,
        version: u64,
        features: &[Column],
        outputs: &[Column],
        bins: usize,
    ) -> Result<Baseline, MonitorError> {
        if bins == 0 {
            return Err(MonitorError::Baseline("bins must be at least 1".into()));
        }
        let rows = features
            .iter()
            .chain(outputs)
            .map(|c| c.values.len())
            .next()
            .ok_or_else(|| MonitorError::Baseline("no columns given".into()))?;
        if rows == 0 {
            return Err(MonitorError::Baseline("columns are empty".into()));
        }
        if let Some(c) = features
            .iter()
            .chain(outputs)
            .find(|c| c.values.len() != rows)
        {
            return Err(MonitorError::Baseline(format!(
                "column {:?} has {} values, expected {rows} like the first column",
                c.name,
                c.values.len()
            )));
        }
        let compute = |cols: &[Column]| -> Result<Vec<BaselineColumn>, MonitorError> {
            cols.iter().map(|c| compute_column(c, bins)).collect()
        };
        let baseline = Baseline {
            schema_version: SCHEMA_VERSION,
            model: model.to_owned(),
            version,
            rows: rows as u64,
            features: compute(features)?,
            outputs: compute(outputs)?,
            calibration: None,
        };
        baseline.validate()?;
        Ok(baseline)
    }

    /// Reads and validates a `baseline.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Baseline, MonitorError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| MonitorError::Io {
            path: path.to_owned(),
            source,
        })?;
        let baseline: Baseline =
            serde_json::from_slice(&bytes).map_err(|source| MonitorError::Json {
                path: path.to_owned(),
                source,
            })?;
        baseline.validate()?;
        Ok(baseline)
    }

    /// Writes the baseline as pretty JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), MonitorError> {
        let path = path.as_ref();
        let json = serde_json::to_vec_pretty(self).map_err(|source| MonitorError::Json {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, json).map_err(|source| MonitorError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks the schema version, unique names, sorted finite edges, consistent sizes and
    /// proportions in [0, 1] summing to 1.
    pub fn validate(&self) -> Result<(), MonitorError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(MonitorError::Baseline(format!(
                "unsupported schema_version {} (this build reads {SCHEMA_VERSION})",
                self.schema_version
            )));
        }
        let mut names = HashSet::new();
        for column in self.features.iter().chain(&self.outputs) {
            let bad = |reason: String| {
                MonitorError::Baseline(format!("column {:?}: {reason}", column.name))
            };
            if column.name.is_empty() {
                return Err(MonitorError::Baseline("a column has an empty name".into()));
            }
            if !names.insert(column.name.as_str()) {
                return Err(bad(
                    "name used twice (features and outputs share names)".into()
                ));
            }
            column.distribution.validate().map_err(bad)?;
        }
        if let Some(c) = &self.calibration {
            c.validate()?;
        }
        Ok(())
    }
}

impl Distribution {
    fn validate(&self) -> Result<(), String> {
        let (sum, nan) = match self {
            Distribution::Numeric {
                edges,
                proportions,
                nan_proportion,
                min,
                max,
            } => {
                for bound in [min, max].into_iter().flatten() {
                    if !bound.is_finite() {
                        return Err(format!("min/max {bound} is not finite"));
                    }
                }
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo > hi
                {
                    return Err(format!("min {lo} is above max {hi}"));
                }
                if let (Some(lo), Some(first)) = (min, edges.first())
                    && lo > first
                {
                    return Err(format!("min {lo} is above the first edge {first}"));
                }
                if let (Some(hi), Some(last)) = (max, edges.last())
                    && hi < last
                {
                    return Err(format!("max {hi} is below the last edge {last}"));
                }
                if edges.len() > MAX_EDGES {
                    return Err(format!(
                        "{} bin edges, more than the {MAX_EDGES} a column may have",
                        edges.len()
                    ));
                }
                if let Some(e) = edges.iter().find(|e| !e.is_finite()) {
                    return Err(format!("edge {e} is not finite"));
                }
                if edges.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("edges are not strictly increasing".into());
                }
                if proportions.len() != edges.len() + 1 {
                    return Err(format!(
                        "{} edges need {} proportions, found {}",
                        edges.len(),
                        edges.len() + 1,
                        proportions.len()
                    ));
                }
                check_proportions(proportions.iter().copied())?;
                (proportions.iter().sum::<f64>(), *nan_proportion)
            }
            Distribution::Categorical {
                categories,
                other,
                nan_proportion,
            } => {
                // Each category is bins and series of its own: a loaded baseline is held to the bound
                // `keel baseline` writes with (the rest goes to "other").
                if categories.len() > MAX_CATEGORIES {
                    return Err(format!(
                        "{} categories, more than the {MAX_CATEGORIES} a column may have (fold the rarest into \"other\")",
                        categories.len()
                    ));
                }
                check_proportions(categories.values().copied().chain([*other]))?;
                (categories.values().sum::<f64>() + other, *nan_proportion)
            }
        };
        check_proportions([nan])?;
        let total = sum + nan;
        if (total - 1.0).abs() > SUM_TOLERANCE {
            return Err(format!("proportions sum to {total}, not 1"));
        }
        Ok(())
    }
}

fn check_proportions(values: impl IntoIterator<Item = f64>) -> Result<(), String> {
    match values.into_iter().find(|p| !(0.0..=1.0).contains(p)) {
        Some(p) => Err(format!("proportion {p} is outside [0, 1]")),
        None => Ok(()),
    }
}

fn compute_column(column: &Column, bins: usize) -> Result<BaselineColumn, MonitorError> {
    let kind = column.kind.unwrap_or_else(|| {
        if column
            .values
            .iter()
            .all(|v| matches!(v, FeatureValue::Number(_)))
        {
            Kind::Numeric
        } else {
            Kind::Categorical
        }
    });
    let distribution = match kind {
        Kind::Numeric => numeric(column, bins)?,
        Kind::Categorical => categorical(&column.values),
    };
    Ok(BaselineColumn {
        name: column.name.clone(),
        tensor: column.tensor.clone(),
        index: column.index,
        distribution,
    })
}

fn numeric(column: &Column, bins: usize) -> Result<Distribution, MonitorError> {
    let rows = column.values.len() as f64;
    let mut values = Vec::with_capacity(column.values.len());
    for v in &column.values {
        values.push(match v {
            FeatureValue::Number(x) => *x,
            FeatureValue::Category(s) => s.trim().parse::<f64>().map_err(|_| {
                MonitorError::Baseline(format!(
                    "column {:?} is numeric but holds {s:?}",
                    column.name
                ))
            })?,
        });
    }
    let nans = values.iter().filter(|x| x.is_nan()).count();
    values.retain(|x| !x.is_nan());
    values.sort_by(f64::total_cmp);
    let mut finite = values.iter().copied().filter(|x| x.is_finite());
    let min = finite.next();
    let max = finite.next_back().or(min);
    let mut edges: Vec<f64> = (1..bins)
        .filter_map(|k| quantile(&values, k as f64 / bins as f64))
        // Infinite training values can make an interpolated edge infinite or NaN; outer bins
        // already cover them.
        .filter(|e| e.is_finite())
        .collect();
    edges.dedup();
    let mut counts = vec![0u64; edges.len() + 1];
    for &x in &values {
        counts[edges.partition_point(|&e| e < x)] += 1;
    }
    Ok(Distribution::Numeric {
        proportions: counts.iter().map(|&c| c as f64 / rows).collect(),
        edges,
        nan_proportion: nans as f64 / rows,
        min,
        max,
    })
}

/// numpy's default ("linear", type 7) quantile of sorted values, including its interpolation
/// formula, so baselines match ones computed with `np.quantile` bit for bit.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let position = last as f64 * q;
    if position >= last as f64 {
        return Some(sorted[last]);
    }
    let below = position.floor();
    let t = position - below;
    let (a, b) = (sorted[below as usize], sorted[below as usize + 1]);
    let diff = b - a;
    Some(if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    })
}

fn categorical(values: &[FeatureValue]) -> Distribution {
    let rows = values.len() as f64;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut nans = 0u64;
    for v in values {
        match v {
            FeatureValue::Number(x) if x.is_nan() => nans += 1,
            FeatureValue::Number(x) => *counts.entry(category_name(*x)).or_default() += 1,
            FeatureValue::Category(s) => {
                if let Some(c) = counts.get_mut(s.as_str()) {
                    *c += 1;
                } else {
                    counts.insert(s.clone(), 1);
                }
            }
        }
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let other: u64 = ranked.iter().skip(MAX_CATEGORIES).map(|(_, c)| c).sum();
    ranked.truncate(MAX_CATEGORIES);
    Distribution::Categorical {
        categories: ranked
            .into_iter()
            .map(|(name, c)| (name, c as f64 / rows))
            .collect(),
        other: other as f64 / rows,
        nan_proportion: nans as f64 / rows,
    }
}

/// The category name of a number: integers without a fraction ("1", not "1.0"), so numeric labels
/// and their string form ("1") name the same category.
pub(crate) fn category_name(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
#[path = "baseline_tests.rs"]
mod tests;

//! How a target's instances are judged `degraded` (live and ready, but failing their users in
//! a gray way: slow, flaky, flapping), as the target declares it (`"degraded": {...}`). Every
//! field has a default, so a target without the block is judged with them; the coordinator's
//! `gray` module applies them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::target::{Invalid, whole_number};

/// The longest error or flapping window, in probes (each is kept as a 64-bit history).
pub const MAX_WINDOW: i32 = 64;

/// One of the four detectors, and the reason word a verdict carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    /// The recent median latency against the instance's own baseline.
    Latency,
    /// Failed probes over a window, even when never `failure_threshold` in a row.
    Errors,
    /// Latency or failure ratio far from the other instances of the same target.
    Outlier,
    /// Too many status changes over a window.
    Flapping,
}

impl Detector {
    /// Every detector, in the order a verdict names the first that fires.
    pub const ALL: [Detector; 4] = [Detector::Latency, Detector::Errors, Detector::Outlier, Detector::Flapping];

    /// The reason word.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Latency => "latency",
            Detector::Errors => "errors",
            Detector::Outlier => "outlier",
            Detector::Flapping => "flapping",
        }
    }

    /// The detector named `word`.
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == word)
    }
}

/// A target's `degraded` block: which detectors judge its instances and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DegradedSpec {
    /// `false` turns gray-failure detection off for the target (its instances are then only
    /// ever `up`, `unready` or `down`). Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The detectors that judge it; default all four.
    #[serde(default = "all")]
    #[schema(max_items = 4)]
    pub detectors: Vec<Detector>,
    /// `latency`: the recent median must be at least this many times the instance's own
    /// baseline median (and above it by `min_increase_ms`). At least 1; default 3.
    #[serde(default = "three")]
    #[schema(minimum = 1, maximum = 1000, default = 3.0)]
    pub latency_factor: f64,
    /// `latency` and `outlier`: the smallest slowdown that counts, in milliseconds, so a
    /// 1 ms service taking 3 ms is not flagged. 0 to 60,000; default 25.
    #[serde(default = "twenty_five", deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 60_000, default = 25)]
    pub min_increase_ms: i32,
    /// `errors`: the share of the last `error_window` probes that failed which makes an
    /// instance degraded (rounded up to whole probes). Above 0, at most 1; default 0.15
    /// (3 of 20).
    #[serde(default = "fifteen_percent")]
    #[schema(exclusive_minimum = 0, maximum = 1, default = 0.15)]
    pub error_ratio: f64,
    /// `errors`: the window, in probes. 1 to 64; default 20.
    #[serde(default = "twenty", deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 64, default = 20)]
    pub error_window: i32,
    /// `outlier`: how many times the median of the target's instances an instance's recent
    /// median must be. At least 1; default 3.
    #[serde(default = "three")]
    #[schema(minimum = 1, maximum = 1000, default = 3.0)]
    pub outlier_factor: f64,
    /// `flapping`: the share of the last `flap_window` probes that changed the status which
    /// makes an instance degraded (rounded up to whole changes). Above 0, at most 1; default
    /// 0.1 (6 of 60).
    #[serde(default = "ten_percent")]
    #[schema(exclusive_minimum = 0, maximum = 1, default = 0.1)]
    pub flap_ratio: f64,
    /// `flapping`: the window, in probes. 1 to 64; default 60.
    #[serde(default = "sixty", deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 64, default = 60)]
    pub flap_window: i32,
}

impl Default for DegradedSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            detectors: all(),
            latency_factor: three(),
            min_increase_ms: twenty_five(),
            error_ratio: fifteen_percent(),
            error_window: twenty(),
            outlier_factor: three(),
            flap_ratio: ten_percent(),
            flap_window: sixty(),
        }
    }
}

fn yes() -> bool {
    true
}
fn all() -> Vec<Detector> {
    Detector::ALL.to_vec()
}
fn three() -> f64 {
    3.0
}
fn twenty_five() -> i32 {
    25
}
fn fifteen_percent() -> f64 {
    0.15
}
fn twenty() -> i32 {
    20
}
fn ten_percent() -> f64 {
    0.1
}
fn sixty() -> i32 {
    60
}

impl DegradedSpec {
    /// Checks every field, naming the first bad one (`degraded.error_window`).
    ///
    /// # Errors
    /// [`Invalid`].
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.detectors.len() > Detector::ALL.len() {
            return Err(Invalid::new("degraded.detectors", "at most the four detectors"));
        }
        for (field, factor) in [("latency_factor", self.latency_factor), ("outlier_factor", self.outlier_factor)] {
            if !(1.0..=1000.0).contains(&factor) {
                return Err(Invalid::new(format!("degraded.{field}"), "a factor from 1 to 1000"));
            }
        }
        if !(0..=60_000).contains(&self.min_increase_ms) {
            return Err(Invalid::new("degraded.min_increase_ms", "0 to 60000 milliseconds"));
        }
        for (ratio, window, ratio_field, window_field) in [
            (self.error_ratio, self.error_window, "error_ratio", "error_window"),
            (self.flap_ratio, self.flap_window, "flap_ratio", "flap_window"),
        ] {
            if !(ratio > 0.0 && ratio <= 1.0) {
                return Err(Invalid::new(format!("degraded.{ratio_field}"), "a ratio above 0, at most 1"));
            }
            if !(1..=MAX_WINDOW).contains(&window) {
                return Err(Invalid::new(format!("degraded.{window_field}"), format!("1 to {MAX_WINDOW} probes")));
            }
        }
        Ok(())
    }

    /// How many of the last `error_window` probes must have failed.
    pub fn error_count(&self) -> u32 {
        count_of(self.error_ratio, self.error_window)
    }

    /// How many of the last `flap_window` probes must have changed the status.
    pub fn flap_changes(&self) -> u32 {
        count_of(self.flap_ratio, self.flap_window)
    }

    /// Whether `detector` judges the target.
    pub fn uses(&self, detector: Detector) -> bool {
        self.enabled && self.detectors.contains(&detector)
    }
}

/// `ratio` of `window` probes, rounded up, at least 1 (a hair below a whole number stays it:
/// 0.15 × 20 is 3, not 3.0000000000000004 rounded up to 4).
fn count_of(ratio: f64, window: i32) -> u32 {
    let exact = ratio * f64::from(window.clamp(1, MAX_WINDOW));
    // Validated: 0 < ratio <= 1 and 1 <= window <= 64, so the count fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = (exact - 1e-9).ceil().max(1.0) as u32;
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: serde_json::Value) -> Result<DegradedSpec, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn field_of(value: serde_json::Value) -> String {
        match parse(value).map(|s| s.validate()) {
            Ok(Err(Invalid { field, .. })) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_block_is_every_default() {
        assert_eq!(parse(serde_json::json!({})), Ok(DegradedSpec::default()));
        assert!(DegradedSpec::default().validate().is_ok());
        let off = parse(serde_json::json!({"enabled": false})).expect("parses");
        assert!(!off.uses(Detector::Latency));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(field_of(serde_json::json!({"latency_factor": 0.5})), "degraded.latency_factor");
        assert_eq!(field_of(serde_json::json!({"outlier_factor": -3})), "degraded.outlier_factor");
        assert_eq!(field_of(serde_json::json!({"error_window": 0})), "degraded.error_window");
        assert_eq!(field_of(serde_json::json!({"flap_window": -1})), "degraded.flap_window");
        assert_eq!(field_of(serde_json::json!({"flap_window": 65})), "degraded.flap_window");
        assert_eq!(field_of(serde_json::json!({"error_ratio": 0})), "degraded.error_ratio");
        assert_eq!(field_of(serde_json::json!({"flap_ratio": 1.5})), "degraded.flap_ratio");
        assert_eq!(field_of(serde_json::json!({"min_increase_ms": -5})), "degraded.min_increase_ms");
    }

    #[test]
    fn ratios_round_up_to_whole_probes() {
        let spec = DegradedSpec::default();
        assert_eq!((spec.error_count(), spec.flap_changes()), (3, 6));
        let spec = DegradedSpec { error_ratio: 0.01, flap_ratio: 1.0, flap_window: 8, ..DegradedSpec::default() };
        assert_eq!((spec.error_count(), spec.flap_changes()), (1, 8));
    }

    #[test]
    fn unknown_keys_and_words_are_refused() {
        assert!(parse(serde_json::json!({"latency": 3})).unwrap_err().contains("unknown field"));
        assert!(parse(serde_json::json!({"detectors": ["slowness"]})).unwrap_err().contains("unknown variant"));
        assert!(parse(serde_json::json!({"error_window": 2.5})).is_err());
    }
}

//! Seed 001's "dynamic learning-rate adjustment based on discriminator performance", as a
//! rule with a bounded effect.
//!
//! Every [`LrControl::window`] D steps the controller looks at the mean gap
//! `D(x) − D(G(z))` (as probabilities) over those steps:
//! - gap > [`GAP_HIGH`]: D is winning too easily, so the balance moves one notch toward G;
//! - gap < [`GAP_LOW`]: D is losing (G fools it), so it moves one notch toward D;
//! - otherwise nothing changes.
//!
//! The balance is one integer `level` in `[-MAX_LEVEL, MAX_LEVEL]`: every generator group's lr
//! is its base × `FACTOR^level` and D's is its base × `FACTOR^-level`. So no lr ever leaves
//! `[base / FACTOR^MAX_LEVEL, base · FACTOR^MAX_LEVEL]` (÷/× 2.44 with the constants below),
//! and a run that recovers moves back toward the base lrs the same way it left them.

use serde::{Deserialize, Serialize};

/// Gap above which D is "winning too easily" (a healthy DCGAN sits around 0.3–0.5).
pub const GAP_HIGH: f64 = 0.6;
/// Gap below which D is "losing".
pub const GAP_LOW: f64 = 0.1;
/// Multiplier per notch.
pub const FACTOR: f32 = 1.25;
/// Notches either way: 1.25⁴ ≈ 2.44.
pub const MAX_LEVEL: i32 = 4;
/// D steps per decision.
pub const DEFAULT_WINDOW: usize = 50;

/// The controller's whole state (saved in checkpoints so a resumed run decides identically).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrControl {
    pub window: usize,
    pub level: i32,
    /// Sum of the gaps and number of D steps in the current window.
    pub gap_sum: f64,
    pub gap_steps: usize,
}

/// A decision that changed the lrs.
#[derive(Clone, Debug, PartialEq)]
pub struct LrChange {
    pub mean_gap: f64,
    pub old_level: i32,
    pub new_level: i32,
}

impl LrControl {
    pub fn new(window: usize) -> Self {
        LrControl {
            window: window.max(1),
            level: 0,
            gap_sum: 0.0,
            gap_steps: 0,
        }
    }

    /// Multiplier of the generator's lrs now.
    pub fn generator_scale(&self) -> f32 {
        FACTOR.powi(self.level)
    }

    /// Multiplier of the discriminator's lr now.
    pub fn discriminator_scale(&self) -> f32 {
        FACTOR.powi(-self.level)
    }

    /// Records one D step; at the end of a window decides, returning the change if any.
    pub fn observe(&mut self, d_x: f32, d_g_z: f32) -> Option<LrChange> {
        self.gap_sum += f64::from(d_x) - f64::from(d_g_z);
        self.gap_steps += 1;
        if self.gap_steps < self.window {
            return None;
        }
        let mean_gap = self.gap_sum / self.gap_steps as f64;
        self.gap_sum = 0.0;
        self.gap_steps = 0;
        let old_level = self.level;
        if mean_gap > GAP_HIGH {
            self.level = (self.level + 1).min(MAX_LEVEL);
        } else if mean_gap < GAP_LOW {
            self.level = (self.level - 1).max(-MAX_LEVEL);
        }
        (self.level != old_level).then_some(LrChange {
            mean_gap,
            old_level,
            new_level: self.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ctrl: &mut LrControl, gap: f32, steps: usize) -> Vec<LrChange> {
        (0..steps)
            .filter_map(|_| ctrl.observe(0.5 + gap / 2.0, 0.5 - gap / 2.0))
            .collect()
    }

    #[test]
    fn decides_once_per_window_and_stays_bounded() {
        let mut c = LrControl::new(10);
        let changes = run(&mut c, 0.9, 100);
        // One notch per window until the bound, then no more changes.
        assert_eq!(changes.len(), MAX_LEVEL as usize);
        assert_eq!(c.level, MAX_LEVEL);
        assert!((c.generator_scale() - FACTOR.powi(MAX_LEVEL)).abs() < 1e-6);
        assert!((c.generator_scale() * c.discriminator_scale() - 1.0).abs() < 1e-6);
        // D losing: back down through 0 to the other bound.
        let back = run(&mut c, 0.0, 100);
        assert_eq!(back.len(), 2 * MAX_LEVEL as usize);
        assert_eq!(c.level, -MAX_LEVEL);
        assert!(back.iter().all(|ch| ch.new_level == ch.old_level - 1));
    }

    #[test]
    fn a_balanced_gap_changes_nothing() {
        let mut c = LrControl::new(5);
        assert!(run(&mut c, 0.35, 50).is_empty());
        assert_eq!(c.level, 0);
    }

    #[test]
    fn the_window_mean_decides_not_single_steps() {
        let mut c = LrControl::new(4);
        // Three balanced steps and one extreme one: mean (3·0.3 + 1.0)/4 = 0.475 < GAP_HIGH.
        for gap in [0.3f32, 0.3, 0.3, 1.0] {
            assert!(c.observe(0.5 + gap / 2.0, 0.5 - gap / 2.0).is_none());
        }
        assert_eq!(c.level, 0);
    }
}

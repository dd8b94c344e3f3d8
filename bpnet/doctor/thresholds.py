"""The numbers the doctor's checks compare against, in one documented place."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Thresholds:
    """Limits used by :func:`~bpnet.doctor.diagnose`, :func:`~bpnet.doctor.check_data`
    and :func:`~bpnet.doctor.check_model`.  Pass your own to tune them, e.g.
    ``diagnose(history, thresholds=Thresholds(dead_frac=0.9))``.

    Step signals are judged on the median of the last ``recent`` records in
    ``History.steps`` (one batch is noisy; a median of a few is not).

    Gradients (``"grad_norm/<layer>"``, first and last layer with parameters):
      explode_ratio   first/last layer gradient-norm ratio above this: exploding (70).
      explode_norm    any layer's gradient norm above this: exploding (1e3).
      explode_growth  total gradient norm grew by more than this factor from the
                      first records to the last: exploding (1e2).
      vanish_ratio    first/last ratio below this ... (1e-3)
      vanish_norm     ... and first-layer norm below this: vanishing (1e-4).
    Activations:
      dead_frac       fraction of ReLU units dead (zero for every sample in a
                      batch) at or above this: dying ReLU (0.7).
      saturated_frac  fraction of sigmoid/tanh outputs saturated (|z| > 5)
                      above this (0.5).
    Loss and learning rate (epoch losses; per-step losses when there are
    fewer than 3 epochs):
      rise_epochs     this many consecutive rises of the loss ... (3)
      rise_rel        ... adding up to more than this relative rise: LR too high (0.1).
      swing_rel       a relative change of the loss between two consecutive
                      points above this is a "large swing" (0.5) ...
      swing_count     ... and this many swings up and down: LR too high (3).
      plateau_window  points over which the loss must improve (5) ...
      plateau_rel     ... by at least this fraction, else it is flat (1e-3).
      converged_loss  a loss below this ... (1e-3)
      converged_rel   ... or below this fraction of the first loss counts as
                      converged, not as a plateau (0.05).
      noise_floor     rises and swings smaller than this fraction of the first
                      loss, or than a quarter of what the run learnt (first loss
                      minus best), are mini-batch noise, not a learning-rate problem (0.05).
      lr_low_ratio    flat loss with update/weight ratio below this: LR too low (1e-5).
      step_high, step_low   update/weight ratio of a weight matrix outside
                      [step_low, step_high] (a healthy step is ~1e-3): STEP_SIZE (1e-1, 1e-6).
      step_growth     with plain SGD the update is exactly lr·g; an update more than
                      this many times lr·‖g‖ (divided by 1 - momentum) means the
                      step is built from something else, e.g. gradients summed
                      over steps without zero_grad: STEP_SIZE (3).
      ascent_cos      median cosine between update and gradient above this: the
                      updates climb the loss (a sign error): GRADIENT_ASCENT (0).
      overfit_epochs  validation loss at least this many epochs past its best, its
                      recent mean above the best by more than its own noise, while
                      the training loss falls ... (3)
      overfit_rise    ... and ending this fraction above its best (and more than twice
                      its noise, and more than a tenth of what it learnt): overfitting
                      (0.05); info when the validation accuracy holds.
    Data:
      mean_max        a feature mean with |mean| above this: unnormalised (20); the same
                      limits apply to regression targets (UNNORMALIZED_TARGETS).
      std_min, std_max  a (non-constant) feature std outside [std_min, std_max] (1e-2, 20);
                      a small std counts only when the IQR is not 0 (rarely-on pixels).
      outlier_z       robust z-score |x - median| / (1.4826 MAD) above this ... (10)
      outlier_range   ... and |x - median| above this many times the feature's
                      1st-99th percentile range: an outlier (2).
      outlier_min_unique  features with fewer distinct values (counts,
                      pixel intensities, categories) are not searched for outliers (20).
      outlier_gap     ... and only values set apart from the rest of their feature by this
                      factor (sorted distances from the median jump by it): a heavy tail is a
                      continuum, a unit error is not (4).
      imbalance_ratio majority/minority class count above this (10).
    """
    recent: int = 3
    explode_ratio: float = 70.0
    explode_norm: float = 1e3
    explode_growth: float = 1e2
    vanish_ratio: float = 1e-3
    vanish_norm: float = 1e-4
    dead_frac: float = 0.7
    saturated_frac: float = 0.5
    rise_epochs: int = 3
    rise_rel: float = 0.1
    swing_rel: float = 0.5
    swing_count: int = 3
    plateau_window: int = 5
    plateau_rel: float = 1e-3
    converged_loss: float = 1e-3
    converged_rel: float = 0.05
    noise_floor: float = 0.05
    lr_low_ratio: float = 1e-5
    step_high: float = 1e-1
    step_low: float = 1e-6
    step_growth: float = 3.0
    ascent_cos: float = 0.0
    overfit_epochs: int = 3
    overfit_rise: float = 0.05
    mean_max: float = 20.0
    std_min: float = 1e-2
    std_max: float = 20.0
    outlier_z: float = 10.0
    outlier_range: float = 2.0
    outlier_min_unique: int = 20
    outlier_gap: float = 4.0
    imbalance_ratio: float = 10.0

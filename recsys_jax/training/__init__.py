"""Training: `fit` and the loop every trainer shares, resumable progress, presets,
experiments (split, select, refit, score), many models as one program, blends, ranking."""

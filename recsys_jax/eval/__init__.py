"""Evaluation: batched prediction for any model, and rating and ranking metrics."""

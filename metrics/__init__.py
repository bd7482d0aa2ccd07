"""Metrics (PROTOCOL.md section 5): functions returning per-example tensors; aggregation and
bootstrap intervals happen later (section 5.7)."""

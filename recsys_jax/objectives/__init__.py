"""What training minimises: element-wise rating losses (some with learned parameters),
penalties on the parameters, and ranking losses of positive pairs against sampled items."""

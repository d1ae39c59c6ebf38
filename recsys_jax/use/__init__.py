"""Using a trained model: the `Recommender`, fold-in of new users, checkpoints, and
exploring what a model learned."""

"""Training methods: each is a recipe, a plan producer and a loss."""

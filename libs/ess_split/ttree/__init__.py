"""TTrees at the level of the format: their records, their baskets, and range files' trees."""

"""The precacher: fetches an edge's assigned files into its cache and verifies them."""

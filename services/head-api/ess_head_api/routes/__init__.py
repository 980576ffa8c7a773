"""The head API's routes, one module per resource."""

"""One module per method; each defines get_method(config) -> sslx.method.Method."""

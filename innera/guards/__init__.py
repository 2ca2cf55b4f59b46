"""Request guards: rate limiting and client identification."""

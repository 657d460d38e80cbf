"""TF-Serving-compatible embedded server and the owner's disguising client."""

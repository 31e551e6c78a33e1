"""The seam between the app and its channel layers' private parts: one module per layer."""

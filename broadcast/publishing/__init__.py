"""Publishing: validate, persist, assign the id under the send lock, hand to the layer."""

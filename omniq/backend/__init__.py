"""OmniQ's storage backends."""

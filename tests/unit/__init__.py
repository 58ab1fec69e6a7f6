"""Tests that need no database: models, SQL file layout, the CLI's parser, pure functions."""

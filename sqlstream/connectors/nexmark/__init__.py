"""The ``nexmark`` source: the standard person/auction/bid benchmark stream, generated."""

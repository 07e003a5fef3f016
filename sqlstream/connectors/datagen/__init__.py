"""The ``datagen`` source: typed random / sequence / event-time columns at a set rate."""

"""The :class:`ImpactModel` facade and its fitted-state record."""

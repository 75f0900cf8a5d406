"""Simulator tier: seeded scenarios with asserted bounds."""

"""Figures a person would rather look at than read: curves, grids, histograms, heat-map overlays."""
